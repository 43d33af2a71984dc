"""`wb audit labeled`: embed a labeled set, find what is wrong with its labels, record the findings.

Evaluation sets given with `--against` that are folders are registered first
(with the detector S was registered with), so their faces are aligned the
same way; `.bin` files are read as they are.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench.curate.calibrate import DedupeTargets, dedupe_calibration
from workbench.curate.dedupe import planted_cosines
from workbench.curate.pairs import DedupeThresholds
from workbench.curate.search import PairSearch
from workbench.embed.compute import ProgressFn, embedding_run, whole_set_vectors
from workbench.embed.models import ModelSpec
from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec
from workbench.formats.images import decode_crop
from workbench.ingest.hashing import phash64_pair
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.labeled.register import register_labeled
from workbench.labeled_audit.calibrate import SINGLE_FPIR
from workbench.labeled_audit.detect import LabelAudit, audit_labels, duplicate_pairs, leaked_identities
from workbench.labeled_audit.findings import replace_findings
from workbench.labeled_audit.report import score_histograms, suspects_grid
from workbench.labeled_audit.sources import EvalFaces, bin_faces, set_faces
from workbench.manifest.workspace import Workspace
from workbench.results import Result


@dataclass
class LabeledAuditResult(Result):
    """`wb audit labeled`: findings per kind, the calibrated rules behind them, and the cost."""

    labeled_set: str
    model_key: str
    faces: int
    identities: int
    wrong_labels: int
    same_person_pairs: int
    mixed_identities: int
    leaked_identities: int
    duplicates: int
    exact_duplicates: int
    cross_identity_duplicates: int
    unchecked_faces: int  # alone under their label: nothing to check them against
    single_face_identities: int
    against: list[str]
    wrong_label_rule: dict[str, Any]
    same_person_rule: dict[str, Any]
    single_photo_rule: dict[str, Any] | None  # one-photo labels: threshold, recall, expected false
    duplicate_rule: dict[str, Any]
    duplicate_search: dict[str, Any]  # inverted lists probed (0: exhaustive), planted pairs it lost
    embedded_now: int  # faces embedded by this run (the rest were in the store)
    embed_seconds: float
    seconds: float
    faces_per_second: float  # whole audit, embedding included
    report: str
    run_id: str
    notes: list[str] = field(default_factory=list)


def resolve_against(workspace: Workspace, labeled_set: str, against: list[str]) -> list[str]:
    """Registered set names and `.bin` paths; folders are registered now (as `eval-<folder>`)."""
    resolved = []
    for item in against:
        path = Path(item).expanduser()
        if path.is_dir():
            with workspace.connect(read_only=True) as con:
                record = registry.get(con, labeled_set).detector
            register_labeled(workspace, f"eval-{path.resolve().name}", path, fmt="folder",
                             detector=DetectorSpec.from_record(record) if record else None)
            resolved.append(f"eval-{path.resolve().name}")
        elif path.is_file():
            resolved.append(str(path.resolve()))
        else:
            with workspace.connect(read_only=True) as con:
                if registry.find(con, item) is None:
                    raise WorkbenchError(f"--against {item}: not a .bin file, a folder or a registered "
                                         "labeled set")
            resolved.append(item)
    return resolved


def run_audit_labeled(
    workspace: Workspace, labeled_set: str, *, model: str | ModelSpec = "dlib", flip: bool = False,
    against: list[str] | None = None, precision: float = 0.9, same_recall: float = 0.98,
    single_fpir: float = SINGLE_FPIR, seed: int = 0, workers: int | None = None,
    progress: ProgressFn | None = None,
    ray: str | None = None,
) -> LabeledAuditResult:
    """`wb audit labeled NAME`: wrong labels, one person under two labels, mixed labels, leakage
    into evaluation sets (`against`: `.bin` files, folders, registered sets) and duplicates.

    Thresholds are measured on the set (`precision`, `same_recall`, `single_fpir`); findings replace the
    set's findings for the model in one transaction.
    Returns: `LabeledAuditResult`; raises `WorkbenchError` for a set with fewer than two identities."""
    if not 0 < precision < 1 or not 0 < same_recall < 1 or not 0 < single_fpir < 1:
        raise WorkbenchError("--precision, --same-recall and --single-fpir must be between 0 and 1")
    sources = resolve_against(workspace, labeled_set, against or [])
    params = {"labeled": labeled_set, "against": sources, "precision": precision,
              "same_recall": same_recall, "single_fpir": single_fpir, "seed": seed}
    started = time.perf_counter()
    with embedding_run(workspace, "audit labeled", params, model=model, flip=flip, workers=workers,
                       progress=progress, ray=ray) as (ctx, run):
        with LabeledSet(workspace, ctx.con, labeled_set) as labeled:
            labels, n_ids = labeled.labels.astype(np.int64), len(labeled.identities)
            if len(np.unique(labels)) < 2:
                raise WorkbenchError(f"{labeled_set}: an audit needs at least two identities with faces")
            sample_idx = labeled.samples.column("sample_idx").to_numpy()
            embedded_now = len(ctx.store().missing(labeled.item_ids()))
            embed_started = time.perf_counter()
            vectors = whole_set_vectors(ctx, labeled)
            embed_seconds = time.perf_counter() - embed_started
            audit = audit_labels(vectors, labels, n_ids, precision=precision, same_recall=same_recall,
                                 single_fpir=single_fpir, seed=seed)
            thresholds, copy_cosines, notes = _dedupe_rule(ctx, labeled, run.run_id)
            notes += audit.single.notes() if audit.single else []
            for source in sources:
                faces = bin_faces(ctx, Path(source)) if Path(source).is_file() else set_faces(ctx, source)
                _add_leaks(audit, faces, vectors, labels, n_ids, thresholds.strict)
            search = _add_duplicates(labeled, audit, vectors, thresholds,
                                     planted_cosines(thresholds.loose, copy_cosines))
            replace_findings(ctx.con, labeled.registration, ctx.store().key, run.run_id, audit.findings,
                             sample_idx)
            report = workspace.root / "reports" / f"audit-labeled-{labeled_set}-{run.run_id}"
            report.mkdir(parents=True, exist_ok=True)
            score_histograms(audit, report / "scores.png")
            suspects_grid(labeled, audit, report / "wrong_labels.png")
        seconds = time.perf_counter() - started
        f = audit.findings
        duplicates = f.of("duplicate")
        result = LabeledAuditResult(
            labeled_set=labeled_set, model_key=ctx.store().key, faces=len(labels), identities=n_ids,
            wrong_labels=f.count("wrong_label"), same_person_pairs=f.count("same_person"),
            mixed_identities=f.count("mixed_identity"),
            leaked_identities=len({f.label[i] for i in f.of("leakage")}),
            duplicates=len(duplicates), exact_duplicates=sum(f.evidence[i]["exact"] for i in duplicates),
            cross_identity_duplicates=sum(not f.evidence[i]["same_identity"] for i in duplicates),
            unchecked_faces=audit.unchecked_faces, single_face_identities=audit.single_face_identities,
            against=sources, wrong_label_rule=audit.wrong.as_dict(), same_person_rule=audit.same.as_dict(),
            single_photo_rule=audit.single.as_dict() if audit.single else None,
            duplicate_rule=asdict(thresholds), duplicate_search=asdict(search), embedded_now=embedded_now,
            embed_seconds=round(embed_seconds, 1), seconds=round(seconds, 1),
            faces_per_second=round(len(labels) / max(seconds, 1e-9), 1), report=str(report),
            run_id=run.run_id, notes=notes)
        run.counts = result.as_dict()
        return result


def _add_leaks(audit: LabelAudit, faces: EvalFaces, vectors: np.ndarray, labels: np.ndarray,
               n_ids: int, copy_from: float) -> None:
    for leak in leaked_identities(faces.vectors, faces.labels, len(faces.identities), vectors, labels,
                                  n_ids, audit.same, copy_from):
        m = leak.match
        audit.findings.add("leakage", leak.label, m.low, other_name=faces.identities[leak.eval_label],
                           against=faces.name, matched=m.matched, pairs=m.pairs, ratio=round(m.ratio, 4),
                           best_cosine=round(leak.best_cosine, 4), copy=leak.copy)


def _dedupe_rule(ctx: Any, labeled: LabeledSet, run_id: str
                 ) -> tuple[DedupeThresholds, tuple[float, ...], list[str]]:
    """The dedupe rule calibrated for the model on this set, and how far its copies drifted
    (`DedupeCalibration.copy_cosines`); the defaults, and no copies, when it cannot be."""
    try:
        calibration = dedupe_calibration(ctx, labeled, DedupeTargets(), run_id)
        return calibration.thresholds(), calibration.copy_cosines, []
    except WorkbenchError as exc:
        return DedupeThresholds(), (), [f"duplicate thresholds are the defaults: {exc}"]


def _add_duplicates(labeled: LabeledSet, audit: LabelAudit, vectors: np.ndarray,
                    thresholds: DedupeThresholds, plant: np.ndarray) -> PairSearch:
    """Exact and near-duplicate faces; the first of each pair (by position) is the one kept.
    Returns how the search for them ran (`dedupe.close_pairs`)."""

    def phash(positions: np.ndarray) -> np.ndarray:
        return np.array([phash64_pair(decode_crop(labeled.crop_bytes(int(p)))) for p in positions],
                        np.uint64).reshape(-1, 2)

    labels = labeled.labels
    pairs, search = duplicate_pairs(vectors, thresholds, phash,
                                    lambda a, b: labeled.crop_bytes(a) == labeled.crop_bytes(b), plant)
    for i, j, cos, exact in pairs:
        audit.findings.add("duplicate", labels[j], cos, sample=j, other_sample=i, other_label=int(labels[i]),
                           exact=exact, same_identity=bool(labels[i] == labels[j]))
    return search
