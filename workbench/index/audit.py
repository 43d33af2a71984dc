"""`wb audit overlap`: measure the overlap detector on the user's own labeled data.

Held-out faces of randomly chosen labeled identities are planted among the
queries: centres and impostor statistics are recomputed without them, then
they are scored like unlabeled faces. Recall of the plant is the share
flagged (overlap or ambiguous); the false-overlap rate is the share of
labeled faces whose best match to another identity passes the threshold.
Cluster evidence is left out, so the recall is a lower bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.embed.compute import ProgressFn, embedding_run, ensure_centres
from workbench.embed.store import labeled_item_id
from workbench.errors import WorkbenchError
from workbench.index.overlap import OverlapSettings
from workbench.index.scoring import Gallery, best_identity, impostor_scores, threshold_at_far
from workbench.labeled.access import LabeledSet
from workbench.workspace import Workspace


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


def centres_from(vectors: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32), norms[:, 0] > 0


def run_audit(
    workspace: Workspace, labeled_set: str, *, model: str = "dlib", flip: bool = False,
    settings: OverlapSettings | None = None, plant_fraction: float = 0.2, hold_out: float = 0.3,
    workers: int | None = None, progress: ProgressFn | None = None,
) -> dict[str, Any]:
    settings = settings or OverlapSettings()
    params = {"labeled": labeled_set, "plant_fraction": plant_fraction, "hold_out": hold_out,
              "far": settings.far, "threshold": settings.threshold}
    with embedding_run(workspace, "audit overlap", params, model=model, flip=flip, workers=workers,
                       progress=progress) as (ctx, run):
        con = ctx.con
        centres = ensure_centres(ctx, labeled_set, settings.per_identity, settings.seed)
        labeled = LabeledSet(workspace, con, labeled_set)
        positions = centres.sample_positions
        labels = labeled.labels[positions]
        sample_idx = labeled.samples.column("sample_idx").to_numpy()[positions]
        vectors = ctx.store().vectors([labeled_item_id(labeled_set, int(i)) for i in sample_idx])
        planted = plant_split(labels, plant_fraction, hold_out, settings.seed)
        if not planted.any():
            raise WorkbenchError(f"{labeled_set} has no identity with two or more sampled faces to plant")
        kept = ~planted
        cents, valid = centres_from(vectors[kept], labels[kept], len(labeled.identities))
        gallery = Gallery.build(cents, valid, vectors[kept], labels[kept])
        impostors = impostor_scores(gallery, vectors[kept], labels[kept], settings.seed)
        threshold = settings.threshold if settings.threshold is not None else \
            threshold_at_far(impostors.tail, settings.far, impostors.comparisons)
        ambiguous_from = min(threshold, threshold_at_far(impostors.tail, settings.ambiguous_far,
                                                         impostors.comparisons))
        z, found, _ = best_identity(vectors[planted], gallery)
        flagged = z >= ambiguous_from
        summary = {
            "labeled_set": labeled_set, "planted": int(planted.sum()),
            "planted_identities": len(np.unique(labels[planted])),
            "threshold": threshold,
            "recall_overlap": float((z >= threshold).mean()),
            "recall_excluded": float(flagged.mean()),
            "correct_identity": float((found[flagged] == labels[planted][flagged]).mean())
            if flagged.any() else float("nan"),
            "false_overlap_rate": float((impostors.best >= threshold).mean()),
            "false_excluded_rate": float((impostors.best >= ambiguous_from).mean()),
            "run_id": run.run_id,
        }
        run.counts = summary
        return summary
