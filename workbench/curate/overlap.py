"""`wb overlap`: flag unlabeled faces whose identity is in the labeled set, so S and U stay disjoint.

Per face: the best identity score against the labeled set (centre and
nearest-sample cosines, averaged with near-identical unlabeled neighbours;
see `scoring.py`), that identity, and the raw centre cosine. Unlabeled faces
are also clustered into pseudo-identities; a cluster whose mean embedding
matches an identity is excluded whole.

Decisions, whatever the identity score says: `copy` when the face is a copy
of a labeled photo (its best cosine to a single labeled face is above what
other photos of one person reach), `overlap` when it matches a single labeled
face (above the copy threshold) without being a copy; both record the
labeled sample matched (`copy_of`). Then `overlap` at or above the identity
threshold (or in a matching cluster);
`ambiguous` at or above the looser threshold, also excluded from training (a
missed overlap teaches the model to push a known person away from their own
centre); `clean` otherwise.

Thresholds are calibrated for the model on the labeled set (`calibrate.py`):
the scores that a fraction `fpir`, `ambiguous_fpir` and `copy_fpir` of
held-out labeled faces playing unknown people reach, a per-face rate valid at
any number of identities. An explicit `threshold` replaces the first.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from workbench.curate.calibrate import OverlapTargets, overlap_calibration
from workbench.curate.clusters import cluster_labels, cluster_means, self_neighbours
from workbench.curate.scoring import Gallery, best_identity, link_threshold, neighbour_consensus
from workbench.curate.search import nearest
from workbench.embed.compute import (
    Centres,
    EmbedContext,
    ProgressFn,
    embed_unlabeled,
    embedding_run,
    ensure_centres,
    labeled_vectors,
    whole_set_vectors,
)
from workbench.embed.models import ModelSpec
from workbench.errors import WorkbenchError
from workbench.labeled.access import LabeledSet
from workbench.manifest.query import registered, transaction
from workbench.manifest.workspace import Workspace
from workbench.results import Result

MAJORITY = 0.8  # share of a cluster's members that must be close for the whole cluster to go
DECISIONS = ("copy", "overlap", "ambiguous", "clean")


@dataclass
class OverlapResult(Result):
    """`wb overlap`: faces per decision, the thresholds used and where the report is."""

    labeled_set: str
    model_key: str
    faces: int
    copy: int
    overlap: int
    ambiguous: int
    clean: int
    threshold: float
    threshold_mode: str
    ambiguous_from: float
    copy_threshold: float | None
    calibration: dict[str, Any]
    link_cosine: float
    clusters: int
    run_id: str
    report: str = ""


@dataclass(frozen=True)
class Copies:
    found: np.ndarray  # per face: matches a single labeled face
    copy: np.ndarray  # per face: ... closely enough to be a copy of that photo
    index: np.ndarray  # position of the closest labeled sample
    similarity: np.ndarray  # cosine to it


def find_copies(vectors: np.ndarray, labeled: np.ndarray, threshold: float, same_photo: float,
                cluster: Any = None) -> Copies:
    """Closest single labeled face of each unlabeled face (FAISS; IVF beyond a size)."""
    sims, idx = nearest(vectors, labeled, 1, cluster=cluster)
    found = sims[:, 0] >= threshold
    return Copies(found, found & (sims[:, 0] >= same_photo), idx[:, 0], sims[:, 0])


@dataclass(frozen=True)
class OverlapSettings:
    threshold: float | None = None  # None: calibrated at targets.fpir
    targets: OverlapTargets = field(default_factory=OverlapTargets)
    link_far: float = 1e-6  # pairwise FAR of 'same person' links between unlabeled faces

    @property
    def per_identity(self) -> int:
        return self.targets.per_identity

    @property
    def seed(self) -> int:
        return self.targets.seed


@dataclass
class FaceScores:
    face_ids: list[str]
    score: np.ndarray
    label: np.ndarray
    cosine: np.ndarray
    cluster: np.ndarray


def decide(scores: FaceScores, cluster_score: np.ndarray, cluster_label: np.ndarray,
           threshold: float, ambiguous_from: float) -> tuple[np.ndarray, np.ndarray]:
    """Decision per face and the identity it is attributed to.

    A cluster is excluded whole when its mean matches an identity and at least
    `MAJORITY` of its members are themselves ambiguous or overlapping: long chains of
    mostly unrelated faces must not drag strangers out with them.
    """
    close = (scores.score >= ambiguous_from).astype(np.float64)
    sizes = np.bincount(scores.cluster, minlength=len(cluster_score))
    share_close = np.bincount(scores.cluster, weights=close, minlength=len(cluster_score)) / \
        np.maximum(sizes, 1)
    matching = (cluster_score >= threshold) & (share_close >= MAJORITY)
    c_label = cluster_label[scores.cluster]
    in_matching_cluster = matching[scores.cluster]
    overlap = (scores.score >= threshold) | in_matching_cluster
    ambiguous = ~overlap & (scores.score >= ambiguous_from)
    decision = np.where(overlap, "overlap", np.where(ambiguous, "ambiguous", "clean"))
    label = np.where(in_matching_cluster & (scores.score < threshold), c_label, scores.label)
    return decision, label


def score_faces(vectors: np.ndarray, face_ids: list[str], gallery: Gallery, link: float,
                cluster: Any = None, nprobe: int = 0) -> tuple[FaceScores, np.ndarray, np.ndarray]:
    """Face scores, and each cluster's score and identity (-inf for singletons); `cluster`: the
    searches run as Ray tasks against the broadcast centres and faces; `nprobe`: the identity
    search the calibration chose (`scoring.identity_candidates`)."""
    score, label, cosine = best_identity(vectors, gallery, cluster=cluster, nprobe=nprobe)
    if len(vectors) < 2:
        return FaceScores(face_ids, score, label, cosine, np.arange(len(vectors))), \
            np.full(len(vectors), -np.inf, np.float32), np.full(len(vectors), -1)
    sims, idx = self_neighbours(vectors, cluster=cluster)
    score = neighbour_consensus(vectors, gallery, score, label, link, sims, idx)
    clusters = cluster_labels(sims, idx, link)
    del sims, idx
    sizes = np.bincount(clusters)
    groups = np.flatnonzero(sizes >= 2)  # only clusters of two or more faces are scored whole
    c_score = np.full(len(sizes), -np.inf, np.float32)
    c_label = np.full(len(sizes), -1, np.int64)
    if len(groups):
        means = cluster_means(vectors, clusters)[groups]
        c_score[groups], c_label[groups], _ = best_identity(means, gallery, cluster=cluster, nprobe=nprobe)
    return FaceScores(face_ids, score, label, cosine, clusters), c_score, c_label


def _identity_scores(ctx: EmbedContext, labeled: LabeledSet, centres: Centres, settings: OverlapSettings,
                     vectors: np.ndarray, face_ids: list[str], cluster: Any, nprobe: int
                     ) -> tuple[FaceScores, np.ndarray, np.ndarray, float]:
    """`score_faces` against the set's gallery, and the link threshold. The gallery (every
    identity's sampled faces: 1.8 GB at MS1MV2's 85,742 identities, 10 each, 512-d) lives only
    here, so the copy search that follows holds the whole set without it."""
    sample_labels = labeled.labels[centres.sample_positions]
    sample_vecs = labeled_vectors(ctx, labeled, centres.sample_positions)
    link = link_threshold(sample_vecs, sample_labels, settings.link_far, settings.seed)
    gallery = Gallery.build(centres.vectors, centres.valid, sample_vecs, sample_labels)
    del sample_vecs  # the gallery holds a copy: not both during the search
    return (*score_faces(vectors, face_ids, gallery, link, cluster, nprobe), link)


def run_overlap(
    workspace: Workspace, labeled_set: str, *, model: str | ModelSpec = "dlib", flip: bool = False,
    settings: OverlapSettings | None = None, workers: int | None = None,
    progress: ProgressFn | None = None, ray: str | None = None,
) -> OverlapResult:
    """`wb overlap --labeled NAME`: flag unlabeled faces whose identity is in the labeled set.

    Embeds what is missing, builds identity centres of the set's registration, calibrates the
    threshold for the model (unless `settings.threshold` fixes it), searches with FAISS, and
    replaces this set's overlap rows in one transaction.
    Returns: `OverlapResult` (decisions by kind, thresholds, calibration, report folder).
    Raises: `WorkbenchError` for an unknown set or one with fewer than two identities."""
    settings = settings or OverlapSettings()
    params = {"labeled": labeled_set, **asdict(settings)}
    with embedding_run(workspace, "overlap", params, model=model, flip=flip, workers=workers,
                       progress=progress, ray=ray) as (ctx, run), \
            ExitStack() as stack:
        con = ctx.con
        embed_unlabeled(ctx)
        centres = ensure_centres(ctx, labeled_set, settings.per_identity, settings.seed)
        if centres.valid.sum() < 2:
            raise WorkbenchError(f"labeled set {labeled_set} needs at least two identities with faces")
        store = ctx.store()
        labeled = stack.enter_context(LabeledSet(workspace, con, labeled_set))
        calibration = overlap_calibration(ctx, labeled, settings.targets, run.run_id)
        threshold = settings.threshold if settings.threshold is not None else calibration.threshold
        ambiguous_from = min(threshold, calibration.ambiguous_from)
        face_ids = [r[0] for r in con.execute("SELECT face_id FROM faces ORDER BY face_id").fetchall()]
        vectors = store.vectors(face_ids) if face_ids else np.empty((0, store.dim), np.float32)
        cluster = ctx.mapper if ctx.mapper.distributed else None
        scores, c_score, c_label, link = _identity_scores(ctx, labeled, centres, settings, vectors, face_ids,
                                                          cluster, calibration.identity_nprobe)
        decision, label = decide(scores, c_score, c_label, threshold, ambiguous_from)
        copies = None
        if settings.targets.copies and calibration.copy_threshold is not None:
            copies = find_copies(vectors, whole_set_vectors(ctx, labeled),
                                 calibration.copy_threshold, calibration.same_photo_from, cluster)
            decision = np.where(copies.copy, "copy", np.where(copies.found, "overlap", decision))
            label = np.where(copies.found, labeled.labels[np.maximum(copies.index, 0)], label)
        _write(con, labeled, scores, c_score[scores.cluster], decision, label,
               model_key=store.key, run_id=run.run_id, copies=copies)
        result = OverlapResult(
            labeled_set=labeled_set, model_key=store.key, faces=len(face_ids),
            **{d: int((decision == d).sum()) for d in DECISIONS},
            threshold=threshold, threshold_mode="fixed" if settings.threshold is not None
            else f"calibrated (FPIR {settings.targets.fpir:g})",
            ambiguous_from=ambiguous_from, copy_threshold=calibration.copy_threshold,
            calibration=calibration.as_dict(), link_cosine=link,
            clusters=len(np.unique(scores.cluster)), run_id=run.run_id)
        result.report = str(write_report(workspace, result, scores, decision, label, labeled.identities,
                                         threshold))
        run.counts = result.as_dict()
        return result


def _write(con: duckdb.DuckDBPyConnection, labeled: LabeledSet, scores: FaceScores,
           cluster_score: np.ndarray, decision: np.ndarray, label: np.ndarray, *, model_key: str,
           run_id: str, copies: Copies | None) -> None:
    n = len(scores.face_ids)
    copy_of = [None] * n if copies is None else [
        item if found else None
        for found, item in zip(copies.found, labeled.item_ids(np.maximum(copies.index, 0)), strict=True)]
    copy_sim = np.full(n, np.nan, np.float32) if copies is None else copies.similarity
    table = pa.table({
        "face_id": pa.array(scores.face_ids, pa.string()),
        "nearest_label": pa.array(label.astype(np.int32)),
        "similarity": pa.array(scores.cosine.astype(np.float32)),
        "score": pa.array(np.nan_to_num(scores.score, neginf=-1e9).astype(np.float32)),
        "cluster_score": pa.array(np.where(np.isfinite(cluster_score), cluster_score, np.nan)
                                  .astype(np.float32), from_pandas=True),
        "decision": pa.array(decision.astype(str)),
        "cluster_id": pa.array([f"c{c}" for c in scores.cluster], pa.string()),
        "copy_of": pa.array(copy_of, pa.string()),
        "copy_similarity": pa.array(copy_sim.astype(np.float32), from_pandas=True),
    })
    with registered(con, overlap_rows=table), transaction(con):
        con.execute("DELETE FROM overlap WHERE labeled_set = ?", [labeled.name])
        con.execute("INSERT INTO overlap (face_id, labeled_set, nearest_label, similarity, score, "
                    "cluster_score, decision, run_id, copy_of, copy_similarity, registration) "
                    "SELECT face_id, ?, nearest_label, similarity, score, cluster_score, decision, ?, "
                    "copy_of, copy_similarity, ? FROM overlap_rows",
                    [labeled.name, run_id, labeled.registration.id])
        con.execute("DELETE FROM clusters")
        con.execute("INSERT INTO clusters (face_id, cluster_id, model_key, run_id) "
                    "SELECT face_id, cluster_id, ?, ? FROM overlap_rows",
                    [model_key, run_id])


def write_report(workspace: Workspace, summary: OverlapResult, scores: FaceScores, decision: np.ndarray,
                 label: np.ndarray, identities: list[str], threshold: float) -> Path:
    """summary.json, top_matches.json and a histogram of the faces' scores with the thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = workspace.root / "reports" / f"overlap-{summary.labeled_set}-{summary.run_id}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, default=float))
    order = np.argsort(-scores.score)[:50]
    top = [{"face_id": scores.face_ids[i], "identity": identities[label[i]],
            "score": float(scores.score[i]), "cosine": float(scores.cosine[i]),
            "decision": str(decision[i])} for i in order]
    (out / "top_matches.json").write_text(json.dumps(top, indent=2))
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = scores.score[np.isfinite(scores.score)]
    bins = np.linspace(min(finite.min(initial=1), summary.ambiguous_from) - 0.02, 1.0, 80)
    ax.hist(finite, bins=bins, alpha=0.7, label="unlabeled faces (best match)")
    ax.axvline(threshold, color="red", label=f"overlap from {threshold:.3f}")
    ax.axvline(summary.ambiguous_from, color="orange", linestyle="--",
               label=f"ambiguous from {summary.ambiguous_from:.3f}")
    ax.set_xlabel("identity score of the best-matching labeled identity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "similarity_histogram.png", dpi=110)
    plt.close(fig)
    return out
