"""How well faces fit their labels, and labels each other: the pure maths of the labeled audit.

Everything works on unit embeddings and integer labels, vectorised over the
set where it can be, and per identity (small matrices) where it must.
- A face's own score is its cosine to the robust centre of its identity with
  itself left out; the centre drops each identity's `TRIM` least typical
  members, so a few wrong faces do not drag it.
- Two groups of faces are the same person when their members match each
  other (cosine >= the model's pair threshold) about as often as members
  within each group match: the match ratio, near 1 for one person and near 0
  for two (taken at the 95% lower bound of the cross-match rate when deciding
  "one person", so that few pairs are weak evidence). It decides one person
  under two labels, leakage of evaluation identities, and (between the two
  halves of a label) mixed identities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import csr_matrix
from scipy.spatial.distance import squareform

from workbench.curate.calibration import wilson
from workbench.embed.unit import unit_rows

TRIM = 0.2  # share of each identity's least typical members left out of its centre
TRIM_FROM = 5  # identities with fewer faces keep all of them
MIN_HALF = 0.2  # a mixed identity's smaller person holds at least this share of its faces
MIN_COHESION = 0.2  # ... and each half's members match each other at least this often
CHUNK = 65_536  # faces per block of per-face arithmetic (a float64 block: 256 MB at 512-d)
PRIOR_PAIRS = 10  # pseudo-pairs at the set's typical rate added to every group's own pairs


@dataclass(frozen=True)
class Members:
    """Positions grouped by label: `positions(l)` are label l's faces."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, n_ids: int, among: np.ndarray | None = None) -> Members:
        """Positions by label; only those where `among` is True when given (positions still
        index the whole set, so no subset of the vectors is copied)."""
        positions = np.arange(len(labels)) if among is None else np.flatnonzero(among)
        order = positions[np.argsort(labels[positions], kind="stable")]
        return cls(order, np.searchsorted(labels[order], np.arange(n_ids + 1)))

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.starts)

    def positions(self, label: int) -> np.ndarray:
        return self.order[self.starts[label]:self.starts[label + 1]]


def unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def label_sums(vectors: np.ndarray, labels: np.ndarray, n_ids: int,
               weights: np.ndarray | None = None) -> np.ndarray:
    """Per-label (weighted) sum of vectors in float64, a sparse product per block of faces (no
    Python loop over faces, and no float64 copy of millions of them)."""
    w = np.ones(len(labels)) if weights is None else weights
    sums = np.zeros((n_ids, vectors.shape[1]), np.float64)
    for c in _chunks(len(labels)):
        rows = np.arange(c.stop - c.start)
        onehot = csr_matrix((w[c], (labels[c], rows)), shape=(n_ids, len(rows)))
        sums += onehot @ unit_rows(vectors, c).astype(np.float64)
    return sums


def rank_in_label(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's rank by `scores` (0 = lowest) within its label, and its label's size."""
    order = np.lexsort((scores, labels))
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    last = np.searchsorted(sorted_labels, sorted_labels, side="right")
    rank, size = np.empty(len(labels), np.int64), np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(order)) - first
    size[order] = last - first
    return rank, size


@dataclass(frozen=True)
class OwnScores:
    own: np.ndarray  # cosine to the own robust centre without the face; nan when alone
    centres: np.ndarray  # unit robust centres (zero rows for empty labels)
    sums: np.ndarray  # weighted sums behind them
    weights: np.ndarray  # 1 for faces in their centre, 0 for trimmed ones


def own_scores(vectors: np.ndarray, labels: np.ndarray, n_ids: int) -> OwnScores:
    """Leave-one-out cosine of every face to its identity's trimmed centre."""
    first = unit(label_sums(vectors, labels, n_ids))
    typical = np.empty(len(labels), np.float32)
    for c in _chunks(len(labels)):
        typical[c] = np.einsum("nd,nd->n", unit_rows(vectors, c), first[labels[c]])
    rank, size = rank_in_label(typical, labels)
    weights = np.where((size >= TRIM_FROM) & (rank < np.floor(TRIM * size)), 0.0, 1.0)
    sums = label_sums(vectors, labels, n_ids, weights)
    own = np.empty(len(labels), np.float32)
    for c in _chunks(len(labels)):
        rows = unit_rows(vectors, c)
        rest = sums[labels[c]] - weights[c, None] * rows
        norms = np.linalg.norm(rest, axis=1)
        score = np.einsum("nd,nd->n", rows, rest) / np.maximum(norms, 1e-12)
        own[c] = np.where(norms < 1e-6, np.nan, score)
    return OwnScores(own, unit(sums), sums, weights)


def _chunks(n: int) -> list[slice]:
    """Row slices of `CHUNK` faces, so per-face temporaries stay small at millions of faces."""
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def impostor_own_scores(vectors: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                        valid: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Scores a face gets from an identity not its own: cosines of up to `n` random faces to
    a random other valid identity's centre (what a wrongly labeled face's own score looks like)."""
    ids = np.flatnonzero(valid)
    if len(ids) < 2 or len(vectors) == 0:
        return np.empty(0, np.float32)
    rng = np.random.default_rng(seed)
    faces = rng.integers(len(vectors), size=n)
    other = ids[rng.integers(len(ids), size=n)]
    keep = other != labels[faces]
    return np.einsum("nd,nd->n", unit_rows(vectors, faces[keep]), centres[other[keep]])


def pair_threshold(vectors: np.ndarray, labels: np.ndarray, far: float, n: int, seed: int,
                   centres: np.ndarray, same_from: float) -> float:
    """The cosine that a share `far` of random pairs of faces of different people reach: pairs
    under different labels, except labels whose centres are as close as a typical person's
    two halves (>= `same_from`): in a small set, one person under two labels would otherwise
    set the threshold."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(len(vectors), size=n), rng.integers(len(vectors), size=n)
    la, lb = labels[a], labels[b]
    different = (la != lb) & (np.einsum("nd,nd->n", centres[la], centres[lb]) < same_from)
    cos = np.einsum("nd,nd->n", unit_rows(vectors, a[different]), unit_rows(vectors, b[different]))
    return float(np.quantile(cos, 1 - far)) if len(cos) else 1.0


@dataclass(frozen=True)
class Cohesion:
    """How many pairs of faces within a group match."""

    matched: int
    pairs: int

    @property
    def raw(self) -> float:
        return self.matched / self.pairs if self.pairs else float("nan")

    def rate(self, typical: float) -> float:
        """The match rate shrunk towards the set's `typical` one by `PRIOR_PAIRS` pseudo-pairs:
        a group of two hard photos (one pair, unmatched) is not taken for a group that matches
        nothing, and a single face gets the typical rate."""
        return (self.matched + PRIOR_PAIRS * typical) / (self.pairs + PRIOR_PAIRS)


def cohesion(group: np.ndarray, threshold: float) -> Cohesion:
    """Matching pairs within `group` (unit rows)."""
    if len(group) < 2:
        return Cohesion(0, 0)
    sims = group @ group.T
    upper = np.triu_indices(len(group), 1)
    return Cohesion(int((sims[upper] >= threshold).sum()), len(upper[0]))


@dataclass(frozen=True)
class Match:
    """How two groups of faces match: cross pairs matched, and the ratio to their own cohesion;
    `low` is the ratio from the 95% lower bound of the cross-match rate, so that a handful of
    lucky pairs between two look-alikes is not taken for one person."""

    matched: int
    pairs: int
    ratio: float
    low: float

    @property
    def rate(self) -> float:
        return self.matched / self.pairs if self.pairs else 0.0


def match(a: np.ndarray, b: np.ndarray, threshold: float, within_a: Cohesion, within_b: Cohesion,
          typical: float) -> Match:
    """Cross-match rate of groups `a` and `b` over the geometric mean of their (shrunk)
    within-group rates."""
    cross = a @ b.T
    matched, pairs = int((cross >= threshold).sum()), cross.size
    scale = max(float(np.sqrt(within_a.rate(typical) * within_b.rate(typical))), 1e-3)
    if not pairs:
        return Match(0, 0, 0.0, 0.0)
    return Match(matched, pairs, matched / pairs / scale, wilson(matched, pairs)[0] / scale)


@dataclass(frozen=True)
class TwoPeople:
    """The best split of one label into two groups, and how much they look like one person."""

    halves: np.ndarray  # 0/1 per member; 1 marks the smaller group
    smaller: float  # share of members in the smaller group
    cohesion: tuple[float, float]
    match: Match
    centre_cosine: float  # between the two groups' unit mean vectors

    def mixed(self, ratio_below: float, centre_below: float) -> bool:
        """Two people: both groups sizeable and coherent, matching each other less than half
        as well as within, with centres as far apart as two different people's."""
        return (self.smaller >= MIN_HALF and min(self.cohesion) >= MIN_COHESION
                and self.match.ratio < ratio_below and self.centre_cosine < centre_below)


def two_people(group: np.ndarray, threshold: float, typical: float) -> TwoPeople | None:
    """Average-linkage split of a label's members into its two largest clusters (outliers,
    which linkage isolates first, are set aside); None under four members."""
    if len(group) < 4:
        return None
    sims = group @ group.T
    distance = np.clip(1 - sims, 0, 2)
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform(distance, checks=False), "average")
    for k in range(2, 5):
        clusters = fcluster(tree, k, "maxclust")
        sizes = np.bincount(clusters)
        big, second = np.argsort(-sizes)[:2]
        if sizes[second] >= max(2, MIN_HALF * len(group)) or k == 4:
            break
    a, b = clusters == big, clusters == second
    if b.sum() < 2:
        return TwoPeople(b.astype(np.int8), float(b.mean()), (1.0, 0.0), Match(0, 0, 1.0, 1.0), 1.0)
    wa, wb = cohesion(group[a], threshold), cohesion(group[b], threshold)
    centres = unit(np.stack([group[a].sum(axis=0), group[b].sum(axis=0)]))
    return TwoPeople(b.astype(np.int8), float(b.sum() / len(group)), (wa.raw, wb.raw),
                     match(group[a], group[b], threshold, wa, wb, typical), float(centres[0] @ centres[1]))
