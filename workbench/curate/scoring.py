"""Overlap scores: how strongly an unlabeled face looks like a labeled identity.

Evidence a user has, combined (measured on the lfw150 scenario with dlib,
benchmarks/overlap_lfw.py):
- centre: cosine to the identity's centre (the unit mean of its sampled faces);
- nearest sample: the best cosine to any single sampled face of the identity,
  which catches poses the mean blurs away;
  identity score = `w` * centre + (1 - `w`) * nearest sample, w = 0.8;
- neighbour consensus: the face's near-identical unlabeled neighbours (cosine
  >= `link`, usually other photos of the same person) are scored against the
  same identity and averaged in, so one clear photo lifts an unclear one and
  a chance resemblance of one photo is damped by the others.
Z-normalising per identity and per query was tried and lost precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.curate.search import nearest

TOP_K = 5
CENTRE_WEIGHT = 0.8
NEIGHBOURS = 5
FLOATS_PER_BATCH = 1 << 25  # ~128 MiB of intermediate similarities


@dataclass(frozen=True)
class Gallery:
    """Labeled evidence: centres and the sampled faces per identity (padded with zeros)."""

    centres: np.ndarray  # (n_ids, d)
    valid: np.ndarray  # (n_ids,)
    samples: np.ndarray  # (n_ids, k_max, d)
    present: np.ndarray  # (n_ids, k_max) bool

    @classmethod
    def build(cls, centres: np.ndarray, valid: np.ndarray, vectors: np.ndarray,
              labels: np.ndarray) -> Gallery:
        n_ids, d = centres.shape
        counts = np.bincount(labels, minlength=n_ids)
        k_max = max(1, int(counts.max(initial=1)))
        samples = np.zeros((n_ids, k_max, d), np.float32)
        present = np.zeros((n_ids, k_max), bool)
        order = np.argsort(labels, kind="stable")
        slot = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
        samples[labels[order], slot] = vectors[order]
        present[labels[order], slot] = True
        return cls(centres.astype(np.float32), valid, samples, present)


def pair_scores(queries: np.ndarray, gallery: Gallery, candidates: np.ndarray) -> np.ndarray:
    """Identity score of each query against each of its candidate identities (n, k)."""
    out = np.full(candidates.shape, -np.inf, np.float32)
    batch = max(1, FLOATS_PER_BATCH // max(1, candidates.shape[1] * gallery.samples[0].size))
    for start in range(0, len(queries), batch):
        q = queries[start : start + batch]
        cand = candidates[start : start + batch]
        safe = np.maximum(cand, 0)
        centre = np.einsum("nd,nkd->nk", q, gallery.centres[safe])
        per_sample = np.einsum("nd,nksd->nks", q, gallery.samples[safe])
        per_sample = np.where(gallery.present[safe], per_sample, -np.inf)
        score = CENTRE_WEIGHT * centre + (1 - CENTRE_WEIGHT) * per_sample.max(axis=2)
        out[start : start + batch] = np.where(cand >= 0, score, -np.inf)
    return out


def identity_candidates(queries: np.ndarray, gallery: Gallery, k: int = TOP_K, cluster: Any = None,
                        nprobe: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k nearest identity centres: (centre cosines, identities; -1 where missing).

    `nprobe` 0: exhaustive. Otherwise an inverted file probing `nprobe` lists where the problem
    is large enough for `search.nearest` to choose one: what the overlap calibration found
    loses no more than `SEARCH_LOSS` of true identities (`calibration.identity_nprobe`). An
    inverted file cannot be assumed: on 85,742 centres in random directions, nprobe 16 missed
    the true identity of 21% of faces at cosine ~0.7 to it, where exhaustive search (~0.1 ms a
    face on 2 cores at 128-d) misses none; on clustered centres it loses none at a tenth of
    the time.
    """
    ids = np.flatnonzero(gallery.valid)
    cos, idx = nearest(queries, gallery.centres[ids], k, exact=True if nprobe == 0 else None,
                       nprobe=max(1, nprobe), cluster=cluster)
    return cos, np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)


def best_identity(queries: np.ndarray, gallery: Gallery, k: int = TOP_K, cluster: Any = None,
                  nprobe: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best identity score, identity, centre cosine) per query over its top-k centres
    (`cluster`: search with Ray tasks, see `search.nearest`; `nprobe`: see `identity_candidates`)."""
    cos, candidates = identity_candidates(queries, gallery, k, cluster, nprobe)
    scores = pair_scores(queries, gallery, candidates)
    best = np.argmax(scores, axis=1)
    rows = np.arange(len(queries))
    return scores[rows, best], candidates[rows, best], cos[rows, best]


def neighbour_consensus(vectors: np.ndarray, gallery: Gallery, score: np.ndarray, label: np.ndarray,
                        link: float, sims: np.ndarray, idx: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Mean of a face's score and its near-identical neighbours' scores for the same identity;
    `sims`, `idx`: each face's nearest faces, itself first (`clusters.self_neighbours`), of
    which the first `k` others are read."""
    total, count = score.astype(np.float64).copy(), np.ones(len(vectors))
    for col in range(1, min(k + 1, idx.shape[1])):
        ok = (sims[:, col] >= link) & (idx[:, col] >= 0) & (label >= 0)
        if ok.any():
            neighbour = idx[ok, col]
            total[ok] += pair_scores(vectors[neighbour], gallery, label[ok][:, None])[:, 0]
            count[ok] += 1
    return (total / count).astype(np.float32)


def link_threshold(vectors: np.ndarray, labels: np.ndarray, far: float, seed: int = 0) -> float:
    """Cosine that a fraction `far` of different-identity labeled pairs reach: 'same person' links."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(3000, len(vectors)), replace=False)
    v, lab = vectors[pick], labels[pick]
    sims = v @ v.T
    different = np.triu(lab[:, None] != lab[None, :], 1)
    return threshold_at_rate(sims[different], far)


def threshold_at_rate(impostor: np.ndarray, rate: float) -> float:
    """A score threshold (decision: score >= threshold) that a fraction `rate` of impostors
    reach, in expectation, on new impostors from the same distribution.

    The threshold sits just above the (k+1)-th highest sample score, which new impostors
    exceed with probability (k+1)/(n+1) on average: k = floor(rate (n+1)) - 1, so the
    sample itself shows at most k, slightly fewer than rate * n.
    """
    if len(impostor) == 0:
        raise ValueError("no impostor scores to calibrate on")
    negated = -np.asarray(impostor, np.float64)
    allowed = max(0, int(np.floor(rate * (len(negated) + 1) + 1e-9)) - 1)
    if allowed >= len(negated):
        return float(-negated.max())
    kth = -np.partition(negated, allowed)[allowed]  # the (allowed+1)-th highest, without a full sort
    return float(np.nextafter(np.float32(kth), np.float32(np.inf)))
