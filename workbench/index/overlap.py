"""`wb overlap`: flag unlabeled faces whose identity is in the labeled set, so S and U stay disjoint.

Per face: the best Z-normalised similarity to a labeled identity centre (see
`scoring.py`), its identity and raw cosine. Unlabeled faces are clustered into
pseudo-identities; a cluster whose mean embedding matches an identity is
excluded whole, so one clear photo of a known person carries the others.
Decisions: `overlap` at or above the threshold (or in a matching cluster),
`ambiguous` within `ambiguous_margin` below it (excluded from training too:
a missed overlap teaches the model to push a known person away from their own
centre), `clean` otherwise.

`auto` threshold: the Z-score that a fraction `far` of impostor comparisons
(labeled faces against other identities' centres) reach. The implied share of
unknown faces flagged is reported as the false-overlap rate.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from workbench.embed.compute import EmbedContext, ProgressFn, embed_unlabeled, ensure_centres
from workbench.embed.models import ModelSpec
from workbench.embed.store import labeled_item_id
from workbench.errors import WorkbenchError
from workbench.index.clusters import cluster_labels, cluster_means
from workbench.index.scoring import ImpostorStats, impostor_stats, threshold_at_far, znorm_top
from workbench.labeled.access import LabeledSet
from workbench.manifest.runs import open_run
from workbench.parallel import process_mapper
from workbench.workspace import Workspace


@dataclass(frozen=True)
class OverlapSettings:
    threshold: float | None = None  # None: auto from `far`
    far: float = 1e-4
    ambiguous_margin: float = 1.0  # in Z units below the threshold
    cluster_far: float = 1e-5  # pairwise FAR for linking unlabeled faces into clusters
    per_identity: int = 10
    seed: int = 0


@dataclass
class FaceScores:
    face_ids: list[str]
    score: np.ndarray
    label: np.ndarray
    cosine: np.ndarray
    cluster: np.ndarray


def decide(scores: FaceScores, cluster_score: np.ndarray, cluster_label: np.ndarray,
           threshold: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Decision per face and the identity it is attributed to."""
    c_score, c_label = cluster_score[scores.cluster], cluster_label[scores.cluster]
    in_matching_cluster = c_score >= threshold
    overlap = (scores.score >= threshold) | in_matching_cluster
    ambiguous = ~overlap & (scores.score >= threshold - margin)
    decision = np.where(overlap, "overlap", np.where(ambiguous, "ambiguous", "clean"))
    label = np.where(in_matching_cluster & (scores.score < threshold), c_label, scores.label)
    return decision, label


def cluster_threshold(sample_vectors: np.ndarray, sample_labels: np.ndarray, far: float,
                      seed: int = 0) -> float:
    """Cosine that a fraction `far` of different-identity labeled pairs reach."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(sample_vectors), size=min(3000, len(sample_vectors)), replace=False)
    v, lab = sample_vectors[pick], sample_labels[pick]
    sims = v @ v.T
    different = lab[:, None] != lab[None, :]
    return threshold_at_far(sims[np.triu(different, 1)], far)


def score_faces(vectors: np.ndarray, face_ids: list[str], centres: np.ndarray, valid: np.ndarray,
                stats: ImpostorStats, link: float) -> tuple[FaceScores, np.ndarray, np.ndarray]:
    score, label, cosine = znorm_top(vectors, centres, valid, stats)
    clusters = cluster_labels(vectors, link)
    means = cluster_means(vectors, clusters)
    sizes = np.bincount(clusters)
    c_score, c_label, _ = znorm_top(means, centres, valid, stats)
    c_score = np.where(sizes >= 2, c_score, -np.inf)  # a singleton's cluster adds nothing
    return FaceScores(face_ids, score, label, cosine, clusters), c_score, c_label


def run_overlap(
    workspace: Workspace, labeled_set: str, *, model: str = "dlib", flip: bool = False,
    settings: OverlapSettings | None = None, workers: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    settings = settings or OverlapSettings()
    spec = ModelSpec.parse(model, flip=flip)
    workers = workers or os.cpu_count() or 1
    params = {"labeled": labeled_set, "model": model, "flip": flip, **asdict(settings)}
    with process_mapper(workers if spec.parallel else 1, chunksize=1) as mapper, \
            open_run(workspace, "overlap", params) as (con, run):
        ctx = EmbedContext(workspace, con, spec, mapper, progress)
        embed_unlabeled(ctx)
        centres = ensure_centres(ctx, labeled_set, settings.per_identity, settings.seed)
        if centres.valid.sum() < 2:
            raise WorkbenchError(f"labeled set {labeled_set} needs at least two identities with faces")
        store = ctx.store()
        labeled = LabeledSet(workspace, con, labeled_set)
        sample_idx = labeled.samples.column("sample_idx").to_numpy()[centres.sample_positions]
        sample_vecs = store.vectors([labeled_item_id(labeled_set, int(i)) for i in sample_idx])
        sample_labels = labeled.labels[centres.sample_positions]
        stats = impostor_stats(centres.vectors, centres.valid, sample_vecs, sample_labels, settings.seed)
        threshold = settings.threshold if settings.threshold is not None else \
            threshold_at_far(stats.scores, settings.far)
        link = cluster_threshold(sample_vecs, sample_labels, settings.cluster_far, settings.seed)
        face_ids = [r[0] for r in con.execute("SELECT face_id FROM faces ORDER BY face_id").fetchall()]
        vectors = store.vectors(face_ids) if face_ids else np.empty((0, store.dim), np.float32)
        scores, c_score, c_label = score_faces(vectors, face_ids, centres.vectors, centres.valid,
                                               stats, link)
        decision, label = decide(scores, c_score, c_label, threshold, settings.ambiguous_margin)
        _write(con, labeled_set, scores, c_score[scores.cluster], decision, label,
               model_key=store.key, run_id=run.run_id)
        summary = {
            "labeled_set": labeled_set, "model_key": store.key, "faces": len(face_ids),
            "overlap": int((decision == "overlap").sum()),
            "ambiguous": int((decision == "ambiguous").sum()),
            "clean": int((decision == "clean").sum()),
            "threshold": threshold, "threshold_mode": "fixed" if settings.threshold is not None
            else f"auto (FAR {settings.far:g})",
            "ambiguous_from": threshold - settings.ambiguous_margin,
            "false_overlap_rate": float((stats.best >= threshold).mean()),
            "cluster_link_cosine": link,
            "clusters": len(np.unique(scores.cluster)),
            "run_id": run.run_id,
        }
        summary["report"] = str(write_report(workspace, summary, scores, decision, label,
                                             labeled.identities, stats, threshold))
        run.counts = summary
        return summary


def _write(con: duckdb.DuckDBPyConnection, labeled_set: str, scores: FaceScores,
           cluster_score: np.ndarray, decision: np.ndarray, label: np.ndarray, *, model_key: str,
           run_id: str) -> None:
    table = pa.table({
        "face_id": pa.array(scores.face_ids, pa.string()),
        "nearest_label": pa.array(label.astype(np.int32)),
        "similarity": pa.array(scores.cosine.astype(np.float32)),
        "score": pa.array(np.nan_to_num(scores.score, neginf=-1e9).astype(np.float32)),
        "cluster_score": pa.array(np.where(np.isfinite(cluster_score), cluster_score, np.nan)
                                  .astype(np.float32), from_pandas=True),
        "decision": pa.array(decision.astype(str)),
        "cluster_id": pa.array([f"c{c}" for c in scores.cluster], pa.string()),
    })
    con.register("overlap_rows", table)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM overlap WHERE labeled_set = ?", [labeled_set])
        con.execute("INSERT INTO overlap SELECT face_id, ?, nearest_label, similarity, score, "
                    "cluster_score, decision, ? FROM overlap_rows", [labeled_set, run_id])
        con.execute("DELETE FROM clusters")
        con.execute("INSERT INTO clusters SELECT face_id, cluster_id, ?, ? FROM overlap_rows",
                    [model_key, run_id])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("overlap_rows")


def write_report(workspace: Workspace, summary: dict[str, Any], scores: FaceScores, decision: np.ndarray,
                 label: np.ndarray, identities: list[str], stats: ImpostorStats, threshold: float) -> Path:
    """counts.json, top_matches.json and a histogram of scores against the impostor distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = workspace.root / "reports" / f"overlap-{summary['labeled_set']}-{summary['run_id']}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    order = np.argsort(-scores.score)[:50]
    top = [{"face_id": scores.face_ids[i], "identity": identities[label[i]],
            "score": float(scores.score[i]), "cosine": float(scores.cosine[i]),
            "decision": str(decision[i])} for i in order]
    (out / "top_matches.json").write_text(json.dumps(top, indent=2))
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = scores.score[np.isfinite(scores.score)]
    bins = np.linspace(min(finite.min(initial=0), stats.scores.min()), max(finite.max(initial=1), 8), 80)
    ax.hist(stats.scores, bins=bins, density=True, alpha=0.5, label="labeled impostors")
    ax.hist(finite, bins=bins, density=True, alpha=0.5, label="unlabeled faces (best match)")
    ax.axvline(threshold, color="red", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("Z-normalised similarity to nearest labeled identity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "similarity_histogram.png", dpi=110)
    plt.close(fig)
    return out
