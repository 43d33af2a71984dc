"""Thresholds measured for a model on the user's labeled data, with their estimated error rates.

Overlap (open-set identification). One face of each of a sample of labeled
identities is held out as a probe; the gallery is rebuilt without it. Scored
with its identity removed from the gallery, a probe plays an unknown person;
with it present (its other faces), a known person. The threshold is set where
a fraction `fpir` of unknown probes would be flagged: the false-positive
identification rate, a per-face rate. Each probe is compared with every
other identity of the real gallery, so the rate holds at the gallery's size,
100 identities or 100,000, unlike a per-comparison false-accept rate (which
at 85k identities flags every face). Copies of labeled photos are judged the
same way against single labeled faces instead of identities.

Dedupe. Synthetic web copies of labeled faces (`faces/copies.py`) against
distinct photos of the same identity; thresholds for a target copy recall and
false-merge rate, and what the rule then achieves on those pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workbench.index.pairs import DedupeThresholds, is_duplicate, popcount64
from workbench.index.scoring import TOP_K, Gallery, pair_scores, threshold_at_rate
from workbench.index.search import nearest

MAX_PROBES = 5000
COPY_CANDIDATES = 32  # nearest labeled faces searched per probe; its own identity's are skipped


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (valid near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def choose_probes(labels: np.ndarray, max_probes: int, seed: int) -> np.ndarray:
    """Mask of one face for each of up to `max_probes` identities with two or more faces."""
    rng = np.random.default_rng(seed)
    ids, counts = np.unique(labels, return_counts=True)
    eligible = ids[counts >= 2]
    chosen = rng.choice(eligible, size=min(max_probes, len(eligible)), replace=False)
    order = rng.permutation(len(labels))
    first = {}
    for position in order:
        first.setdefault(int(labels[position]), int(position))
    mask = np.zeros(len(labels), bool)
    mask[[first[int(i)] for i in chosen]] = True
    return mask


def centres_from(vectors: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean vector of each label (zero rows for labels without vectors), and which exist."""
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32), norms[:, 0] > 0


@dataclass(frozen=True)
class OpenSetScores:
    unknown: np.ndarray  # per probe: best identity score, its own identity left out
    known: np.ndarray  # per probe: best identity score, its identity present
    known_right: np.ndarray  # per probe: the best identity is its own


def open_set_scores(vectors: np.ndarray, labels: np.ndarray, n_ids: int, probes: np.ndarray
                    ) -> OpenSetScores:
    """Score held-out probes as unknown and as known people, as `wb overlap` scores faces
    (top-`TOP_K` centres, then centre and nearest-sample evidence)."""
    kept = ~probes
    centres, valid = centres_from(vectors[kept], labels[kept], n_ids)
    gallery = Gallery.build(centres, valid, vectors[kept], labels[kept])
    queries, own = vectors[probes], labels[probes]
    ids = np.flatnonzero(valid)
    _, idx = nearest(queries, centres[ids], min(TOP_K + 1, len(ids)))
    candidates = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)
    scores = pair_scores(queries, gallery, candidates)
    rows = np.arange(len(queries))
    best = np.argmax(scores, axis=1)
    unknown = np.where(candidates == own[:, None], -np.inf, scores).max(axis=1)
    return OpenSetScores(unknown, scores[rows, best], candidates[rows, best] == own)


def copy_impostor_scores(queries: np.ndarray, own: np.ndarray, base: np.ndarray,
                         base_labels: np.ndarray) -> np.ndarray:
    """Best cosine of each query to a single labeled face of another identity."""
    sims, idx = nearest(queries, base, min(COPY_CANDIDATES, len(base)))
    other = (idx >= 0) & (base_labels[np.maximum(idx, 0)] != own[:, None])
    return np.where(other, sims, -np.inf).max(axis=1)


@dataclass(frozen=True)
class OverlapCalibration:
    threshold: float
    ambiguous_from: float
    copy_threshold: float | None
    fpir: float
    ambiguous_fpir: float
    copy_fpir: float
    probes: int
    identities: int
    measured_fpir: float
    measured_fpir_95ci: tuple[float, float]
    excluded_fpir: float  # overlap or ambiguous
    known_recall: float  # known probes flagged overlap
    known_recall_95ci: tuple[float, float]
    known_excluded: float  # known probes flagged overlap or ambiguous
    right_identity: float  # of the flagged known probes, share given their own identity
    copy_measured_fpir: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def calibrate_overlap(scores: OpenSetScores, n_ids: int, fpir: float, ambiguous_fpir: float,
                      copy_fpir: float, copy_impostors: np.ndarray | None) -> OverlapCalibration:
    n = len(scores.unknown)
    threshold = threshold_at_rate(scores.unknown, fpir)
    ambiguous_from = min(threshold, threshold_at_rate(scores.unknown, ambiguous_fpir))
    false = int((scores.unknown >= threshold).sum())
    flagged = scores.known >= threshold
    copy_threshold = copy_measured = None
    if copy_impostors is not None and len(copy_impostors):
        copy_threshold = threshold_at_rate(copy_impostors, copy_fpir)
        copy_measured = float((copy_impostors >= copy_threshold).mean())
    return OverlapCalibration(
        threshold=threshold, ambiguous_from=ambiguous_from, copy_threshold=copy_threshold,
        fpir=fpir, ambiguous_fpir=ambiguous_fpir, copy_fpir=copy_fpir, probes=n, identities=n_ids,
        measured_fpir=false / n, measured_fpir_95ci=wilson(false, n),
        excluded_fpir=float((scores.unknown >= ambiguous_from).mean()),
        known_recall=float(flagged.mean()), known_recall_95ci=wilson(int(flagged.sum()), n),
        known_excluded=float((scores.known >= ambiguous_from).mean()),
        right_identity=float(scores.known_right[flagged].mean()) if flagged.any() else float("nan"),
        copy_measured_fpir=copy_measured,
    )


@dataclass(frozen=True)
class PairEvidence:
    """Cosine and crop-hash distance of pairs."""

    cosine: np.ndarray
    hash_bits: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, hash_a: np.ndarray, hash_b: np.ndarray) -> PairEvidence:
        cosine = np.einsum("nd,nd->n", a, b)
        bits = popcount64(hash_a.astype(np.uint64) ^ hash_b.astype(np.uint64))
        return cls(cosine, bits)

    def merged(self, t: DedupeThresholds) -> np.ndarray:
        """The pairs `wb dedupe` would call duplicates under `t`."""
        return is_duplicate(self.cosine, self.hash_bits, t)


@dataclass(frozen=True)
class DedupeCalibration:
    strict: float
    loose: float
    phash_bits: int
    target_recall: float
    target_merge_rate: float
    copies: int
    distinct_pairs: int
    recall: float
    recall_95ci: tuple[float, float]
    merge_rate: float
    merge_rate_95ci: tuple[float, float]

    def thresholds(self, k: int = DedupeThresholds.k) -> DedupeThresholds:
        return DedupeThresholds(self.strict, self.loose, self.phash_bits, k)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def calibrate_dedupe(copies: PairEvidence, distinct: PairEvidence, recall: float,
                     merge_rate: float) -> DedupeCalibration:
    """Half the merge budget to the cosine rule, half to the cosine-and-hash rule.

    `strict`: the cosine that at most merge_rate/2 of distinct photos reach.
    `loose`: the cosine that `recall` of copies reach, never above `strict`.
    `phash_bits`: the most differing hash bits that keep distinct pairs above
    `loose` within the other half of the budget.
    """
    strict = threshold_at_rate(distinct.cosine, merge_rate / 2)
    loose = min(strict, float(np.quantile(copies.cosine, 1 - recall, method="lower")))
    close = distinct.cosine >= loose
    bits = 0
    for b in range(1, 33):
        if (close & (distinct.hash_bits <= b)).mean() > merge_rate / 2:
            break
        bits = b
    result = DedupeThresholds(strict, loose, bits)
    found, merged = copies.merged(result), distinct.merged(result)
    return DedupeCalibration(
        strict=strict, loose=loose, phash_bits=bits, target_recall=recall,
        target_merge_rate=merge_rate, copies=len(found), distinct_pairs=len(merged),
        recall=float(found.mean()), recall_95ci=wilson(int(found.sum()), len(found)),
        merge_rate=float(merged.mean()), merge_rate_95ci=wilson(int(merged.sum()), len(merged)),
    )
