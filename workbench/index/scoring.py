"""Overlap scores: how strongly an unlabeled face looks like a labeled identity.

The raw evidence is the cosine similarity to an identity's centre (the unit
mean of its sampled labeled faces). Identities differ in how close unrelated
people come to them (a generic-looking centre attracts impostors), so scores
are Z-normalised per identity with impostor statistics measured on the
labeled set itself: z = (s - mu_j) / sigma_j, where mu_j and sigma_j are the
mean and deviation of identity j's similarity to other identities' samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.index.search import nearest

IMPOSTOR_SAMPLES = 2000
MAX_COMPARISONS = 20_000_000  # bounds memory at 85k+ identities (~235 samples there)
TOP_K = 5


@dataclass(frozen=True)
class ImpostorStats:
    mean: np.ndarray  # per centre
    std: np.ndarray  # per centre
    scores: np.ndarray  # Z-scores of sampled impostor comparisons (pooled), for thresholds
    best: np.ndarray  # per sampled labeled face: its best Z-score against other identities


def impostor_stats(
    centres: np.ndarray, valid: np.ndarray, sample_vectors: np.ndarray, sample_labels: np.ndarray,
    seed: int = 0, n_samples: int = IMPOSTOR_SAMPLES,
) -> ImpostorStats:
    """Per-centre impostor mean/std from up to `n_samples` labeled faces of other identities."""
    rng = np.random.default_rng(seed)
    n_samples = min(n_samples, len(sample_vectors), max(50, MAX_COMPARISONS // max(len(centres), 1)))
    pick = rng.choice(len(sample_vectors), size=n_samples, replace=False)
    vecs, labels = sample_vectors[pick], sample_labels[pick]
    sims = vecs @ centres.T  # (m, n_centres)
    own = labels[:, None] == np.arange(len(centres))[None, :]
    impostor = ~own & valid[None, :]
    counts = impostor.sum(axis=0)
    mean = np.where(impostor, sims, 0).sum(axis=0) / np.maximum(counts, 1)
    var = np.where(impostor, (sims - mean) ** 2, 0).sum(axis=0) / np.maximum(counts - 1, 1)
    std = np.sqrt(np.maximum(var, 1e-6))
    z = (sims - mean) / std
    z_imp = np.where(impostor, z, -np.inf)
    return ImpostorStats(mean.astype(np.float32), std.astype(np.float32),
                         z[impostor].astype(np.float32), z_imp.max(axis=1).astype(np.float32))


def znorm_top(
    queries: np.ndarray, centres: np.ndarray, valid: np.ndarray, stats: ImpostorStats, k: int = TOP_K,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best Z-score, its identity, its raw cosine) per query, over the top-k centres by cosine."""
    ids = np.flatnonzero(valid)
    sims, idx = nearest(queries, centres[ids], k)
    labels = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)
    z = np.where(idx >= 0, (sims - stats.mean[np.maximum(labels, 0)]) / stats.std[np.maximum(labels, 0)],
                 -np.inf)
    best = np.argmax(z, axis=1)
    rows = np.arange(len(queries))
    return z[rows, best], labels[rows, best], sims[rows, best]


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> float:
    """The score that a fraction `far` of impostor comparisons reach or exceed."""
    if len(impostor_scores) == 0:
        raise ValueError("no impostor comparisons: the labeled set needs at least two identities")
    return float(np.quantile(impostor_scores, 1.0 - far, method="higher"))
