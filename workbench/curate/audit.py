"""`wb audit overlap`: measure the overlap detector on the user's own labeled data.

Held-out faces of randomly chosen labeled identities are planted among the
queries: centres and impostor statistics are recomputed without them, then
they are scored like unlabeled faces. Recall of the plant is the share
flagged (overlap or ambiguous), with the thresholds `wb overlap` would use
(calibrated for the model, or `--threshold`); the calibration's estimated
rates are reported beside it. Cluster evidence is left out, so the recall is
a lower bound. Recall is also given by how many labeled faces the planted
faces' identities have (`recall_by_size`): an identity known from two photos
has a noisier centre than one known from fifty, and one overall figure would
hide that its people are the ones let through.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from workbench.curate.calibrate import overlap_calibration
from workbench.curate.calibration import wilson
from workbench.curate.overlap import OverlapSettings
from workbench.curate.scoring import Gallery, best_identity
from workbench.embed.compute import ProgressFn, embedding_run, ensure_centres, labeled_vectors, unit_centres
from workbench.embed.models import ModelSpec
from workbench.errors import WorkbenchError
from workbench.labeled.access import LabeledSet
from workbench.manifest.workspace import Workspace
from workbench.results import Result


def plant_split(labels: np.ndarray, plant_fraction: float, hold_out: float,
                seed: int) -> np.ndarray:
    """Boolean mask of samples to plant: `hold_out` of each chosen identity's samples
    (at least one, never all), for `plant_fraction` of identities with >= 2 samples."""
    rng = np.random.default_rng(seed)
    ids, counts = np.unique(labels, return_counts=True)
    eligible = ids[counts >= 2]
    chosen = rng.choice(eligible, size=max(1, round(plant_fraction * len(eligible))), replace=False) \
        if len(eligible) else eligible
    planted = np.zeros(len(labels), bool)
    for identity in chosen:
        members = rng.permutation(np.flatnonzero(labels == identity))
        n = min(len(members) - 1, max(1, round(hold_out * len(members))))
        planted[members[:n]] = True
    return planted


SIZE_BINS = (2, 4, 10, 30)  # identities by their labeled faces: 2-3, 4-9, 10-29, 30 or more


def recall_by_size(sizes: np.ndarray, identities: np.ndarray, flagged: np.ndarray
                   ) -> dict[str, dict[str, object]]:
    """Recall of planted faces (`flagged`: excluded) per bin of `SIZE_BINS` by their identity's
    number of labeled faces (`sizes`), with its 95% interval counted by identity (faces of one
    person are not independent evidence); bins with no planted face are left out."""
    out: dict[str, dict[str, object]] = {}
    edges = (*SIZE_BINS, np.inf)
    for low, high in itertools.pairwise(edges):
        members = (sizes >= low) & (sizes < high)
        if not members.any():
            continue
        people = len(np.unique(identities[members]))
        recall = float(flagged[members].mean())
        name = f"{low}-{int(high) - 1}" if np.isfinite(high) else f"{low}+"
        out[name] = {"planted": int(members.sum()), "identities": people, "recall_excluded": recall,
                     "recall_excluded_95ci": wilson(round(recall * people), people)}
    return out


@dataclass
class AuditResult(Result):
    """`wb audit overlap`: recall on planted known faces and the calibrated false-overlap rates."""

    labeled_set: str
    planted: int
    planted_identities: int
    threshold: float
    recall_overlap: float
    recall_excluded: float
    correct_identity: float
    recall_by_size: dict[str, dict[str, object]]  # by the identity's number of labeled faces
    calibrated_fpir: float
    calibrated_excluded_fpir: float
    run_id: str


def run_audit(
    workspace: Workspace, labeled_set: str, *, model: str | ModelSpec = "dlib", flip: bool = False,
    settings: OverlapSettings | None = None, plant_fraction: float = 0.2, hold_out: float = 0.3,
    workers: int | None = None, progress: ProgressFn | None = None, ray: str | None = None,
) -> AuditResult:
    """`wb audit overlap`: plant held-out photos of known people and measure what overlap finds.

    Args: `plant_fraction` of the identities with two or more sampled faces to plant, `hold_out`
    faces per planted identity, `settings` the overlap settings under test.
    Returns: `AuditResult` (recall at the overlap and ambiguous thresholds, identity accuracy, and
    the calibration's FPIR beside them)."""
    settings = settings or OverlapSettings()
    params = {"labeled": labeled_set, "plant_fraction": plant_fraction, "hold_out": hold_out,
              "fpir": settings.targets.fpir, "threshold": settings.threshold}
    with embedding_run(workspace, "audit overlap", params, model=model, flip=flip, workers=workers,
                       progress=progress, ray=ray) as (ctx, run), \
            ExitStack() as stack:
        con = ctx.con
        centres = ensure_centres(ctx, labeled_set, settings.per_identity, settings.seed)
        labeled = stack.enter_context(LabeledSet(workspace, con, labeled_set))
        positions = centres.sample_positions
        labels = labeled.labels[positions]
        vectors = labeled_vectors(ctx, labeled, positions)
        planted = plant_split(labels, plant_fraction, hold_out, settings.seed)
        if not planted.any():
            raise WorkbenchError(f"{labeled_set} has no identity with two or more sampled faces to plant")
        kept = ~planted
        cents, valid = unit_centres(vectors[kept], labels[kept], len(labeled.identities))
        gallery = Gallery.build(cents, valid, vectors[kept], labels[kept])
        calibration = overlap_calibration(ctx, labeled, settings.targets, run.run_id)
        threshold = settings.threshold if settings.threshold is not None else calibration.threshold
        ambiguous_from = min(threshold, calibration.ambiguous_from)
        z, found, _ = best_identity(vectors[planted], gallery)
        flagged = z >= ambiguous_from
        result = AuditResult(
            labeled_set=labeled_set, planted=int(planted.sum()),
            planted_identities=len(np.unique(labels[planted])), threshold=threshold,
            recall_overlap=float((z >= threshold).mean()), recall_excluded=float(flagged.mean()),
            correct_identity=float((found[flagged] == labels[planted][flagged]).mean())
            if flagged.any() else float("nan"),
            recall_by_size=recall_by_size(np.bincount(labeled.labels)[labels[planted]], labels[planted],
                                          flagged),
            calibrated_fpir=calibration.measured_fpir, calibrated_excluded_fpir=calibration.excluded_fpir,
            run_id=run.run_id)
        run.counts = result.as_dict()
        return result
