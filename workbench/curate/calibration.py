"""Thresholds measured for a model on the user's labeled data, with their estimated error rates.

Overlap (open-set identification). Labeled faces scored against the gallery
with their own identity removed play unknown people (up to `MAX_UNKNOWN`
faces; the rest of the gallery is the real one). One face of each of a sample
of identities, held out and scored with the gallery rebuilt without it (its
identity present through its other faces), plays a known person. The
threshold is set where a fraction `fpir` of unknown faces would be flagged:
the false-positive identification rate, a per-face rate. Each probe is compared with every
other identity of the real gallery, so the rate holds at the gallery's size,
100 identities or 100,000, unlike a per-comparison false-accept rate (which
at 85k identities flags every face). Matches to single labeled faces are
judged the same way (`copy_fpir`); such a match is called a copy of that
photo only above the cosine that 1% of other photos of the same person reach.
The known probes also choose the identity search `wb overlap` runs on many
faces: an inverted file with the fewest probed lists that loses at most
`SEARCH_LOSS` of the identities exhaustive search finds, or exhaustive search.

Dedupe. Synthetic web copies of labeled faces, re-found by the detector
(`faces/copies.py`; recall is reported per transformation), against
distinct photos of the same identity, each face paired with its most similar
other photo of that person (dedupe compares a face with its nearest
neighbours, so random pairs would understate merges); thresholds for a target
copy recall and false-merge rate, and what the rule then achieves on those pairs.
A pair nearer than the median copy in both cosine and hash is the labeled set's
own copy (one photo filed twice, a burst of frames), not two photos. Where the
hashes alone would decide (faces of copies of one group photo share the
image's hash), `loose` stays above the cosine that `merge_rate` of faces reach
against their most similar face of another person.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from workbench.curate.pairs import DedupeThresholds, Hashes, hash_bits, is_duplicate
from workbench.curate.scoring import TOP_K, Gallery, identity_candidates, pair_scores, threshold_at_rate
from workbench.curate.search import SEARCH_LOSS, ivf_lists, nearest, probe_sweep
from workbench.embed.compute import unit_centres

MAX_PROBES = 5000  # known-person probes: one face each of this many identities
MAX_UNKNOWN = 20000  # unknown-person probes: labeled faces with their identity left out
IDENTICAL = 1 - 1e-6  # cosine of two identical crops (the embedding is deterministic)
SAME_PHOTO_RATE = 0.01  # share of distinct photos of one person that may be called copies
COPY_CANDIDATES = 32  # nearest labeled faces searched per probe; its own identity's are skipped
IDENTITY_NPROBES = (16, 64, 256)  # inverted lists an approximate identity search may probe, tried in turn


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (valid near 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def choose_unknown(n: int, max_unknown: int, seed: int) -> np.ndarray:
    """Mask of up to `max_unknown` faces, chosen at random, to play unknown people."""
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).choice(n, size=min(n, max_unknown), replace=False)] = True
    return mask


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


@dataclass(frozen=True)
class OpenSetScores:
    unknown: np.ndarray  # per probe: best identity score, its own identity left out
    known: np.ndarray  # per probe: best identity score, its identity present
    known_right: np.ndarray  # per probe: the best identity is its own
    unknown_identities: int  # distinct people among the unknown probes
    identity_nprobe: int = 0  # inverted lists the identity search needs (0: exhaustive)
    identity_search_lost: float = 0.0  # share of known probes' identities that search loses


def identity_search(queries: np.ndarray, labels: np.ndarray, gallery: Gallery,
                    exact: np.ndarray) -> tuple[int, float]:
    """The fewest inverted lists (of `IDENTITY_NPROBES`) an approximate identity search must
    probe to lose at most `SEARCH_LOSS` of the known probes whose own identity exhaustive search
    proposes (`exact`: its candidate identities, best first), and the share it loses; (0, 0.0)
    when none does, or when the gallery is so small that its inverted file would have no more
    lists than that: search exhaustively."""
    ids = np.flatnonzero(gallery.valid)
    fewer = [nprobe for nprobe in IDENTITY_NPROBES if nprobe < ivf_lists(len(ids))]
    if not fewer:
        return 0, 0.0
    found = (exact[:, :TOP_K] == labels[:, None]).any(axis=1)
    for nprobe, idx in probe_sweep(queries, gallery.centres[ids], TOP_K, fewer):
        approx = np.where(idx >= 0, ids[np.maximum(idx, 0)], -1)
        lost = float((found & ~(approx == labels[:, None]).any(axis=1)).sum() / max(1, found.sum()))
        if lost <= SEARCH_LOSS:
            return nprobe, lost
    return 0, 0.0


def _candidate_scores(queries: np.ndarray, gallery: Gallery) -> tuple[np.ndarray, np.ndarray]:
    """Identity scores against each query's top-`TOP_K` + 1 centres, found by the search `wb
    overlap` runs (the extra one stands in when the query's own identity is left out)."""
    _, candidates = identity_candidates(queries, gallery, TOP_K + 1)  # exhaustive
    return pair_scores(queries, gallery, candidates), candidates


def best_other_identity(queries: np.ndarray, query_labels: np.ndarray, gallery: Gallery
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best identity score and that identity, its own label left out."""
    scores, candidates = _candidate_scores(queries, gallery)
    scores = np.where(candidates == query_labels[:, None], -np.inf, scores)
    best = np.argmax(scores, axis=1)
    rows = np.arange(len(best))
    return scores[rows, best], candidates[rows, best]


def open_set_scores(vectors: np.ndarray, labels: np.ndarray, n_ids: int, unknown: np.ndarray,
                    known: np.ndarray) -> OpenSetScores:
    """Score the `unknown` faces with their identity left out of the full gallery, and the
    `known` probes against a gallery rebuilt without them."""
    centres, valid = unit_centres(vectors, labels, n_ids)
    full = Gallery.build(centres, valid, vectors, labels)
    unknown_best, _ = best_other_identity(vectors[unknown], labels[unknown], full)
    kept = ~known
    centres, valid = unit_centres(vectors[kept], labels[kept], n_ids)
    rebuilt = Gallery.build(centres, valid, vectors[kept], labels[kept])
    scores, candidates = _candidate_scores(vectors[known], rebuilt)
    best = np.argmax(scores, axis=1)
    rows = np.arange(len(best))
    nprobe, lost = identity_search(vectors[known], labels[known], rebuilt, candidates)
    return OpenSetScores(unknown_best, scores[rows, best], candidates[rows, best] == labels[known],
                         len(np.unique(labels[unknown])), nprobe, lost)


def single_face_scores(queries: np.ndarray, own: np.ndarray, own_index: np.ndarray, base: np.ndarray,
                       base_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From one search of each query's `COPY_CANDIDATES` nearest labeled faces: the best cosine to
    a face of another identity, and the best cosine and position of another face of its own
    identity (not itself; -inf and -1 when none is that near)."""
    sims, idx = nearest(queries, base, min(COPY_CANDIDATES, len(base)))
    found = idx >= 0
    same_label = found & (base_labels[np.maximum(idx, 0)] == own[:, None])
    other = np.where(found & ~same_label, sims, -np.inf).max(axis=1)
    same = np.where(same_label & (idx != own_index[:, None]), sims, -np.inf)
    best = np.argmax(same, axis=1)
    rows = np.arange(len(best))
    same_best = same[rows, best]
    return other, same_best, np.where(np.isfinite(same_best), idx[rows, best], -1)


@dataclass(frozen=True)
class OverlapCalibration:
    threshold: float
    ambiguous_from: float
    copy_threshold: float | None  # a single-face match: excluded
    same_photo_from: float | None  # ... and above this, called a copy of that photo
    fpir: float
    ambiguous_fpir: float
    copy_fpir: float
    unknown_probes: int
    known_probes: int
    identities: int
    measured_fpir: float
    measured_fpir_95ci: tuple[float, float]
    excluded_fpir: float  # overlap or ambiguous
    known_recall: float  # known probes flagged overlap
    known_recall_95ci: tuple[float, float]
    known_excluded: float  # known probes flagged overlap or ambiguous
    right_identity: float  # of the flagged known probes, share given their own identity
    copy_measured_fpir: float | None
    identity_nprobe: int = 0  # the identity search `wb overlap` runs (0: exhaustive; stored before: 0)
    identity_search_lost: float = 0.0  # known probes' identities it loses against exhaustive search

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def calibrate_overlap(scores: OpenSetScores, n_ids: int, fpir: float, ambiguous_fpir: float,
                      copy_fpir: float, copy_impostors: np.ndarray | None,
                      same_person: np.ndarray | None = None) -> OverlapCalibration:
    n, n_known = len(scores.unknown), len(scores.known)
    # Faces of one person are not independent evidence: the interval counts identities.
    n_eff = min(n, int(scores.unknown_identities)) if scores.unknown_identities else n
    threshold = threshold_at_rate(scores.unknown, fpir)
    ambiguous_from = min(threshold, threshold_at_rate(scores.unknown, ambiguous_fpir))
    false = int((scores.unknown >= threshold).sum())
    flagged = scores.known >= threshold
    copy_threshold = copy_measured = same_photo = None
    if copy_impostors is not None and len(copy_impostors):
        copy_threshold = threshold_at_rate(copy_impostors, copy_fpir)
        copy_measured = float((copy_impostors >= copy_threshold).mean())
        others = same_person[np.isfinite(same_person)] if same_person is not None else []
        same_photo = max(copy_threshold, threshold_at_rate(others, SAME_PHOTO_RATE)) if len(others) \
            else copy_threshold
    return OverlapCalibration(
        threshold=threshold, ambiguous_from=ambiguous_from, copy_threshold=copy_threshold,
        same_photo_from=same_photo,
        fpir=fpir, ambiguous_fpir=ambiguous_fpir, copy_fpir=copy_fpir, unknown_probes=n,
        known_probes=n_known, identities=n_ids,
        measured_fpir=false / n, measured_fpir_95ci=wilson(round(false / n * n_eff), n_eff),
        excluded_fpir=float((scores.unknown >= ambiguous_from).mean()),
        known_recall=float(flagged.mean()), known_recall_95ci=wilson(int(flagged.sum()), n_known),
        known_excluded=float((scores.known >= ambiguous_from).mean()),
        right_identity=float(scores.known_right[flagged].mean()) if flagged.any() else float("nan"),
        copy_measured_fpir=copy_measured, identity_nprobe=scores.identity_nprobe,
        identity_search_lost=scores.identity_search_lost,
    )


@dataclass(frozen=True)
class PairEvidence:
    """Cosine and hash distance (`pairs.hash_bits`: crops' or photos', the nearer) of pairs, and
    where measured their registered context correlation (`faces.context`; NaN: not measured)."""

    cosine: np.ndarray
    hash_bits: np.ndarray
    context: np.ndarray | None = None

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, hashes_a: Hashes, hashes_b: Hashes,
           context: np.ndarray | None = None) -> PairEvidence:
        """Pairs of embeddings `a[n]`, `b[n]` with their hashes (faces of two photos)."""
        return cls(np.einsum("nd,nd->n", a, b), hash_bits(hashes_a, hashes_b), context)

    def __getitem__(self, rows: np.ndarray) -> PairEvidence:
        return PairEvidence(self.cosine[rows], self.hash_bits[rows],
                            None if self.context is None else self.context[rows])

    def merged(self, t: DedupeThresholds) -> np.ndarray:
        """The pairs `wb dedupe` would call duplicates under `t`."""
        return is_duplicate(self.cosine, self.hash_bits, t, self.context)


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
    recall_by_transform: dict[str, float] = field(default_factory=dict)  # copies found, per edit
    distinct_like_copies: int = 0  # labeled pairs as close as the typical copy: S's own copies, left out
    loose_floor: float = -1.0  # no `loose` below: merge_rate of faces reach it against another person
    context: float = DedupeThresholds.context  # registered context correlation that makes a duplicate
    context_pairs: int = 0  # distinct pairs whose context correlation was measured
    context_recall: float = 0.0  # share of copies the context rule alone finds
    copy_cosines: tuple[float, ...] = ()  # each copy's cosine to its original, ascending

    def thresholds(self, k: int = DedupeThresholds.k) -> DedupeThresholds:
        return DedupeThresholds(self.strict, self.loose, self.phash_bits, k, self.context)

    def warnings(self) -> list[str]:
        """A line when the measured rule misses what was asked (a model that sees copies as
        different faces), with what to try."""
        if self.recall_95ci[1] >= self.target_recall:
            return []
        lines = []
        if self.distinct_like_copies > self.target_merge_rate * self.distinct_pairs:
            lines.append(f"{self.distinct_like_copies} more pairs of one labeled person's photos are as "
                         "close as a typical web copy: the labeled set holds copies of its own photos "
                         "(wb audit labeled lists them); they were not counted as distinct photos")
        worst = sorted(self.recall_by_transform.items(), key=lambda kv: kv[1])[:2]
        named = f" (fewest: {', '.join(f'{t} {r:.2f}' for t, r in worst)})" if worst else ""
        return [f"the calibrated rule finds {self.recall:.2f} of synthetic web copies{named} (95% CI up "
                f"to {self.recall_95ci[1]:.2f}), below the {self.target_recall:.2f} asked: this model "
                "changes its vectors under those edits; try a stronger model "
                "(--model sface, onnx:PATH), --flip, or a lower --recall", *lines]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def calibrate_dedupe(copies: PairEvidence, distinct: PairEvidence, recall: float,
                     merge_rate: float, transforms: np.ndarray | None = None,
                     other_person: np.ndarray | None = None,
                     other_context: np.ndarray | None = None) -> DedupeCalibration:
    """Half the merge budget to the cosine rule and as much to the context rule (each alone), all
    of it to the three together.

    `strict`: the cosine that at most merge_rate/2 of distinct photos reach.
    `context`: the registered context correlation that at most merge_rate/2 of the distinct pairs
    measured for it reach, nor of `other_context` (faces against their most similar context of
    another person: a plain background looks alike across people). Its distinct pairs are those
    whose hashes differ more than 95% of copies' do: a labeled set holds copies of its own photos
    at other sizes and crops, which the context rule rightly finds and which, counted as distinct
    photos, would leave it no budget (celeba200: 1.7% of its pairs); the evidence that sets them
    apart must not be the one being calibrated.
    `loose` and `phash_bits` together: of the pairs (a percentile of the copies' cosines,
    bits that keep all merges of distinct pairs within `merge_rate`), the one that finds the
    most copies (ties: the fewer merges, then the higher `loose`, then the fewer bits: where
    the context rule finds the copies already, hash bits that would only merge more photos are
    not spent). Every percentile, the lowest included: the hash rule is there for the copies
    whose embeddings drifted furthest (lfw150, copies made from its photos: a `loose` held at
    the copies' 1st percentile needed 13 bits to find 99.1% of them, one below it 8 bits for
    99.5%, and found real reframed copies at 0.990 instead of 0.980, merging 0.88% of one
    person's distinct photos instead of 1.05%).
    A `loose` taken from the copies alone can sit where many distinct photos of one person are
    close too (sets with near-identical shots), leaving no hash bits to spend and few copies
    found. `other_person`: each sampled face's best cosine to another identity; `loose` stays
    above the cosine `merge_rate` of them reach, since a hash can match across people (copies of
    one group photo).
    """
    floor = -1.0 if other_person is None or not len(other_person) else \
        threshold_at_rate(other_person, merge_rate)
    # A pair of labeled photos nearer than the median web copy in both embedding and hash is a
    # copy itself (one photo filed twice, or a burst of near-identical frames), not two photos:
    # counted as merges such pairs leave no budget at all, not even for plain copies.
    like_copy = (distinct.cosine >= np.median(copies.cosine)) & \
        (distinct.hash_bits <= np.median(copies.hash_bits))
    like_copies = int(like_copy.sum())
    photos = ~like_copy
    distinct = distinct[photos if photos.any() else np.ones_like(photos)]
    if distinct.context is not None:
        hashed_apart = distinct.hash_bits > np.quantile(copies.hash_bits, 0.95)
        distinct = PairEvidence(distinct.cosine, distinct.hash_bits,
                                np.where(hashed_apart, distinct.context, np.nan))
    context, context_pairs = _context_threshold(distinct.context, other_context, merge_rate / 2)
    strict = threshold_at_rate(distinct.cosine, merge_rate / 2)
    candidates = np.quantile(copies.cosine, np.linspace(0, 0.99, 100), method="lower")
    by_context = distinct.merged(DedupeThresholds(2.0, 2.0, -1, context=context))
    # (copies found, -distinct merged, loose, -bits): the most copies, then the fewest merges,
    # then the higher `loose`, then the fewer bits; bits -1 is no hash rule at all
    best = (-1, 0.0, strict, 1)
    for loose in np.unique(np.clip(candidates, min(floor, strict), strict))[::-1]:
        close = distinct.cosine >= loose
        for b in range(-1, 33):
            merged = float(((distinct.cosine >= strict) | by_context |
                            (close & (distinct.hash_bits <= b))).mean())
            if b >= 0 and merged > merge_rate:
                break
            found = int(copies.merged(DedupeThresholds(strict, float(loose), b, context=context)).sum())
            best = max(best, (found, -merged, float(loose), -b))
    result = DedupeThresholds(strict, best[2], -best[3], context=context)
    found, merged = copies.merged(result), distinct.merged(result)
    return DedupeCalibration(
        strict=strict, loose=best[2], phash_bits=-best[3], target_recall=recall,
        target_merge_rate=merge_rate, copies=len(found), distinct_pairs=len(merged),
        recall=float(found.mean()), recall_95ci=wilson(int(found.sum()), len(found)),
        merge_rate=float(merged.mean()), merge_rate_95ci=wilson(int(merged.sum()), len(merged)),
        recall_by_transform={} if transforms is None else
        {str(t): round(float(found[transforms == t].mean()), 4) for t in dict.fromkeys(transforms.tolist())},
        distinct_like_copies=like_copies, loose_floor=float(floor), context=context,
        context_pairs=context_pairs,
        context_recall=float(copies.merged(DedupeThresholds(2.0, 2.0, -1, context=context)).mean()),
        copy_cosines=tuple(np.round(np.sort(copies.cosine), 4).tolist()),
    )


def _context_threshold(distinct: np.ndarray | None, other: np.ndarray | None,
                       rate: float) -> tuple[float, int]:
    """(threshold, pairs measured): the registered context correlation that at most `rate` of the
    measured distinct pairs and of the other-person matches reach; the default where none could
    be measured (every pair shared too little of its frame to say)."""
    def evidence(x: np.ndarray) -> np.ndarray:  # -1: the two photos shared too little to say
        return x[np.isfinite(x) & (x > -1.0)]

    measured = [evidence(x) for x in (distinct, other) if x is not None]
    measured = [x for x in measured if len(x)]
    if not measured:
        return DedupeThresholds.context, 0
    pairs = 0 if distinct is None else len(evidence(distinct))
    return max(threshold_at_rate(x, rate) for x in measured), pairs
