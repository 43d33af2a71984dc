"""Pure metric functions, checked in tests against scikit-learn and hand-worked cases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    ranks = _average_ranks(scores)
    n_pos, n_neg = len(positive), len(negative)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """Share of negatives at or above the threshold that keeps `tpr` of positives."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    threshold = np.sort(positive)[::-1][max(0, math.ceil(tpr * len(positive)) - 1)]
    return float((negative >= threshold).mean())


def roc_curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    return np.r_[0.0, _share_at_or_above(negative, thresholds)], \
        np.r_[0.0, _share_at_or_above(positive, thresholds)]


def _share_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, the fraction of `values` >= it (sorting, not a loop)."""
    ordered = np.sort(values)
    return (len(ordered) - np.searchsorted(ordered, thresholds, side="left")) / max(len(ordered), 1)


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float | None:
    """True-accept rate at the threshold where a fraction `far` of impostors is accepted.

    None when there are fewer than 1/far impostor pairs (the rate cannot be resolved).
    """
    if len(impostor) < 1 / far or len(genuine) == 0:
        return None
    k = max(1, math.floor(far * len(impostor)))
    threshold = np.sort(impostor)[::-1][k - 1]
    return float((genuine > threshold).mean())


def verification_accuracy(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray
                          ) -> tuple[float, float, float]:
    """10-fold accuracy: the threshold is chosen on the other folds. (mean, std, mean threshold)."""
    accs, thresholds = [], []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        values = np.unique(scores[train])
        candidates = np.r_[values[0] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1] + 1e-6]
        same, different = scores[train][issame[train]], scores[train][~issame[train]]
        # accuracy(t) = (same pairs >= t + different pairs < t) / n, for every candidate at once
        correct = _share_at_or_above(same, candidates) * len(same) + \
            (1 - _share_at_or_above(different, candidates)) * len(different)
        best = candidates[int(np.argmax(correct))]
        thresholds.append(best)
        accs.append(((scores[test] >= best) == issame[test]).mean())
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thresholds))


def open_set_identification(known_scores: np.ndarray, known_correct: np.ndarray,
                            unknown_scores: np.ndarray, fpir: float) -> float:
    """DIR at FPIR: known probes ranked correctly first AND above the threshold that lets
    a fraction `fpir` of unknown probes through."""
    if len(unknown_scores) == 0 or len(known_scores) == 0:
        return float("nan")
    k = max(1, math.floor(fpir * len(unknown_scores)))
    threshold = np.sort(unknown_scores)[::-1][k - 1]
    return float((known_correct & (known_scores > threshold)).mean())


def pairwise_cosine_distances(centres: np.ndarray, *, exact_limit: int = 20_000, n_pairs: int = 2_000_000,
                              seed: int = 0) -> tuple[np.ndarray, float | None]:
    """1 - cos over distinct centre pairs: all pairs up to `exact_limit` centres, else a uniform
    sample of `n_pairs`. Returns (distances, 95% bound on the sampled mean's error or None)."""
    c = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    n = len(c)
    if n <= exact_limit:
        out = []
        for start in range(0, n, 2048):
            block = c[start : start + 2048] @ c.T
            rows = np.arange(start, min(n, start + 2048))[:, None]
            out.append(1.0 - block[np.arange(n)[None, :] > rows])
        return np.concatenate(out) if out else np.empty(0), None
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = rng.integers(0, n - 1, n_pairs)
    j = np.where(j >= i, j + 1, j)
    d = 1.0 - np.einsum("nd,nd->n", c[i], c[j])
    return d, float(1.96 * d.std(ddof=1) / math.sqrt(n_pairs))


@dataclass(frozen=True)
class OpenSetScores:
    """Per face: max softmax probability, its class, entropy (nats), max cosine to any centre and
    the energy score logsumexp(s * cos) (minus the free energy; Liu et al. 2020): three ways to
    say "known", which a loss can move separately."""

    msp: np.ndarray
    pred: np.ndarray
    entropy: np.ndarray
    max_cos: np.ndarray
    energy: np.ndarray


CHUNK_ELEMENTS = 1 << 25  # logits held at once (256 MB in float64): ~390 faces at 85,742 classes


def open_set_scores(embeddings: np.ndarray, centres: np.ndarray, scale: float,
                    chunk_elements: int = CHUNK_ELEMENTS) -> OpenSetScores:
    """`softmax_stats` of s * cos to every centre, and the max cosine, computed a chunk of rows at
    a time: memory is bounded by `chunk_elements`, whatever the number of faces (an unchunked
    490k x 85,742 logit matrix is 168 GB)."""
    n = len(embeddings)
    out = OpenSetScores(np.empty(n, np.float64), np.empty(n, np.int64), np.empty(n, np.float64),
                        np.empty(n, np.float32), np.empty(n, np.float64))
    rows = max(1, chunk_elements // max(1, len(centres)))
    for start in range(0, n, rows):
        cos = embeddings[start : start + rows] @ centres.T
        part = slice(start, start + len(cos))
        out.max_cos[part] = cos.max(axis=1)
        # float64: at s = 64 a float32 exp underflows to 0 and the entropy's 0 * log 0 turns NaN
        p, out.energy[part] = _softmax(scale * cos.astype(np.float64))
        out.msp[part], out.pred[part], out.entropy[part] = _probability_stats(p)
    return out


def _softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise probabilities and log-sum-exp, from one exp of the logits."""
    top = logits.max(axis=1, keepdims=True)
    p = np.exp(logits - top)
    total = p.sum(axis=1, keepdims=True)
    p /= total
    return p, (top + np.log(total))[:, 0]


def _probability_stats(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
    return p.max(axis=1), p.argmax(axis=1), entropy


def softmax_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(max probability, argmax, entropy in nats) per row, computed stably."""
    return _probability_stats(_softmax(logits)[0])
