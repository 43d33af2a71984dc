"""Thresholds of the labeled audit, measured for the model on the audited set itself.

Wrong labels. A wrongly labeled face is another person, so its own score is
an impostor score, whose distribution I is measured cleanly (faces against
random other identities). The observed own scores are the mixture
F = (1 - pi) G + pi I; genuine faces almost never score below the impostor
median m, so pi ~ F(m) / I(m) (counted with one face more, so that a set
with a single wrong face can still have it found). The threshold is the highest own score whose
estimated precision pi I(t) / F(t) still meets the target; its estimated
recall is I(t). Both estimates count the set's own pre-existing noise as what
it is: wrongly labeled faces.

One person, two labels (and leakage). Members of each of a sample of real
identities are split at random into two halves: the halves are one person
under two labels, and their match ratio (`evidence.match`) is what such pairs
look like. The threshold is the ratio (at the lower bound of its cross-match
rate) that `same_recall` of those halves reach, never below `MIN_SAME_RATIO`.

Mixed identities. A label's two largest clusters are two people when they
match less than `MIN_SAME_RATIO` as well as within themselves and their
centres are no closer than the centres of 99% of pairs of different labels
(a pose or age split of one person keeps its centres close). Merged pairs of
random identities measure how often a mixed label is found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workbench.curate.calibrate import OverlapTargets
from workbench.curate.calibration import (
    MAX_PROBES,
    MAX_UNKNOWN,
    calibrate_overlap,
    choose_probes,
    choose_unknown,
    open_set_scores,
)
from workbench.embed.compute import sample_per_identity
from workbench.embed.unit import unit_rows
from workbench.labeled_audit.evidence import MIN_HALF, Members, TwoPeople, cohesion, match, two_people, unit

MIN_SAME_RATIO = 0.5  # below this, two groups match less than half as well as each within itself
SIMULATIONS = 400  # identities split, and identity pairs merged, to calibrate
GRID = 400  # candidate wrong-label thresholds
SINGLE_FPIR = 0.01  # as `wb overlap --fpir`: the share of other people's lone photos found
GALLERY_PER_IDENTITY = OverlapTargets().per_identity  # faces per identity in the galleries, as overlap's
BELONGS_RATE = 0.01  # share of faces kept under their labels that fit another identity that well


@dataclass(frozen=True)
class WrongLabelRule:
    """`threshold`: own score below which a face is called wrongly labeled. `loose` (where the
    estimated precision is still 0.5): below this, it is called so when another identity fits
    it better than its own and at least `belongs`, the best-other-identity score that only
    1% of the faces clearly right (own score above `loose`) reach (a rate per face, so it holds at any number
    of identities)."""

    threshold: float
    loose: float
    belongs: float
    target_precision: float
    wrong_share: float  # estimated share of wrongly labeled faces in the set
    estimated_precision: float
    estimated_recall: float
    impostor_scores: int

    def flags(self, own: np.ndarray, other: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return (own < self.threshold) | (
                (own < self.loose) & (other > own) & (other >= self.belongs))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def wrong_label_rule(own: np.ndarray, impostor: np.ndarray, precision: float,
                     other: np.ndarray | None = None) -> WrongLabelRule:
    """The rule for `own` scores; `other` (each face's best score from another person's label)
    sets `belongs`, without it nothing is flagged by the second clause."""
    all_own, own = own, np.sort(own[np.isfinite(own)])
    impostor = np.sort(impostor)
    if len(own) == 0 or len(impostor) == 0:
        return WrongLabelRule(float("-inf"), float("-inf"), float("inf"), precision, 0.0, float("nan"),
                              0.0, len(impostor))
    median = float(np.median(impostor))
    share = min(1.0, (2 * float(np.searchsorted(own, median)) + 1) / len(own))
    grid = np.quantile(impostor, np.linspace(0.5, 0.9999, GRID))
    below_i = np.searchsorted(impostor, grid) / len(impostor)
    below_f = np.maximum(np.searchsorted(own, grid) / len(own), 1e-12)
    est = np.minimum(1.0, share * below_i / below_f)
    meets = np.flatnonzero(est >= precision)
    pick = meets[-1] if len(meets) else 0
    loose = grid[max(pick, np.flatnonzero(est >= 0.5)[-1] if (est >= 0.5).any() else 0)]
    kept = np.isfinite(all_own) & (all_own >= loose)
    belongs = float(np.quantile(other[kept], 1 - BELONGS_RATE)) \
        if other is not None and kept.any() else float("inf")
    return WrongLabelRule(float(grid[pick]), float(loose), belongs, precision, share,
                          float(est[pick]), float(below_i[pick]), len(impostor))


def split_half_centres(vectors: np.ndarray, members: Members, recall: float, seed: int) -> float:
    """The centre cosine that `recall` of random halves of the set's identities reach: how
    close the centres of one person under two labels are."""
    rng = np.random.default_rng(seed)
    big = np.flatnonzero(members.counts >= 6)
    cosines = []
    for label in rng.choice(big, size=min(SIMULATIONS, len(big)), replace=False):
        faces = unit_rows(vectors, rng.permutation(members.positions(label)))
        halves = unit(np.stack([faces[: len(faces) // 2].sum(axis=0), faces[len(faces) // 2:].sum(axis=0)]))
        cosines.append(float(halves[0] @ halves[1]))
    return float(np.quantile(cosines, 1 - recall)) if cosines else 1.0


@dataclass(frozen=True)
class SameRule:
    """Two groups are one person when their match ratio reaches `ratio`."""

    pair_threshold: float  # cosine at which two faces match
    typical_cohesion: float  # median share of matching pairs within a label
    ratio: float
    distinct_centres: float  # centre cosine that 99% of pairs of different labels stay below
    split_halves: int
    split_recall: float  # simulated one-person-two-labels pairs found
    merged: int
    merged_recall: float  # simulated two-people labels found mixed

    def mixed(self, split: TwoPeople | None) -> bool:
        return split is not None and split.mixed(MIN_SAME_RATIO, self.distinct_centres)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def same_rule(vectors: np.ndarray, members: Members, centres: np.ndarray, pair_threshold: float,
              recall: float, seed: int) -> SameRule:
    rng = np.random.default_rng(seed)
    big = np.flatnonzero(members.counts >= 6)
    sample = rng.choice(big, size=min(SIMULATIONS, len(big)), replace=False)
    rates = [cohesion(unit_rows(vectors, members.positions(label)), pair_threshold).raw for label in sample]
    typical = float(np.median(rates)) if rates else 0.5
    ratios = []
    for label in sample:
        faces = unit_rows(vectors, rng.permutation(members.positions(label)))
        a, b = faces[: len(faces) // 2], faces[len(faces) // 2:]
        ratios.append(match(a, b, pair_threshold, cohesion(a, pair_threshold), cohesion(b, pair_threshold),
                            typical).low)
    ratio = max(MIN_SAME_RATIO, float(np.quantile(ratios, 1 - recall))) if ratios else MIN_SAME_RATIO
    split_recall = float(np.mean(np.array(ratios) >= ratio)) if ratios else float("nan")
    distinct = _distinct_centres(centres, members.counts > 0, rng)
    merged = _merged_found(vectors, members, pair_threshold, typical, distinct, rng)
    return SameRule(pair_threshold, typical, ratio, distinct, len(ratios), split_recall, len(merged),
                    float(np.mean(merged)) if merged else float("nan"))


def _distinct_centres(centres: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> float:
    ids = np.flatnonzero(valid)
    if len(ids) < 2:
        return 1.0
    a, b = ids[rng.integers(len(ids), size=100_000)], ids[rng.integers(len(ids), size=100_000)]
    keep = a != b
    return float(np.quantile(np.einsum("nd,nd->n", centres[a[keep]], centres[b[keep]]), 0.99))


def _merged_found(vectors: np.ndarray, members: Members, pair_threshold: float, typical: float,
                  distinct: float, rng: np.random.Generator) -> list[bool]:
    """Whether each of a sample of two merged random identities of similar size is found mixed."""
    eligible = np.flatnonzero(members.counts >= 4)
    if len(eligible) < 2:
        return []
    found = []
    for _ in range(SIMULATIONS):
        a, b = rng.choice(eligible, size=2, replace=False)
        if min(members.counts[a], members.counts[b]) < MIN_HALF * (members.counts[a] + members.counts[b]):
            continue
        split: TwoPeople | None = two_people(
            unit_rows(vectors, np.concatenate([members.positions(a), members.positions(b)])), pair_threshold,
            typical)
        found.append(bool(split is not None and split.mixed(MIN_SAME_RATIO, distinct)))
    return found


@dataclass(frozen=True)
class SinglePhotoRule:
    """A label with one photo is another label's person when its face scores at least
    `threshold` against that identity: the overlap calibration's known-person threshold
    (`curate.calibration`), measured on this set at `fpir`."""

    threshold: float
    fpir: float  # asked for (`--single-fpir`; the overlap calibration's default)
    measured_fpir: float
    known_recall: float  # single photos of a labeled person that reach the threshold (simulated)
    known_recall_95ci: tuple[float, float]
    single_photos: int
    expected_false: float  # single-photo findings that are two people, estimated
    unknown_probes: int = 0  # faces that played other people

    def notes(self) -> list[str]:
        """A line when `fpir` is below what the faces that played other people can measure."""
        if self.fpir * self.unknown_probes >= 2:
            return []
        return [f"one-photo labels: --single-fpir {self.fpir:g} is below 2 / the {self.unknown_probes:,} "
                "faces that played other people, so the threshold is about their highest score "
                f"(simulated recall {self.known_recall:.2f}); raise it"]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def several_photo_faces(labels: np.ndarray, seed: int) -> np.ndarray:
    """What one-photo labels are compared with, in the calibration and in the search alike: the
    sampled faces of labels with two or more photos. Scoring other people's faces against the
    one-photo labels too would let the very pairs the rule looks for (a labeled person's faces
    against that person's lone photo under another label: 2% of LFW's labels) pass for other
    people, and lift the threshold past most lone photos of labeled people."""
    kept = sample_per_identity(labels, GALLERY_PER_IDENTITY, seed)
    counts = np.bincount(labels)
    return kept[counts[labels[kept]] >= 2]


def single_photo_rule(vectors: np.ndarray, labels: np.ndarray, n_ids: int, single_photos: int,
                      clean: np.ndarray, seed: int, fpir: float = SINGLE_FPIR) -> SinglePhotoRule | None:
    """Calibrated as `wb overlap` is, against labels of several photos (`several_photo_faces`):
    faces scored with their own identity left out play other people; one face of each of a
    sample of identities, scored with the rest of its identity, plays a lone photo of a labeled
    person. Only `clean` faces (not suspected of a wrong label,
    their label not found to be one person with another) play other people: the findings
    themselves would otherwise raise the threshold. None when there is nothing to calibrate on."""
    kept = several_photo_faces(labels, seed)
    vectors, labels, clean = unit_rows(vectors, kept), labels[kept], clean[kept]
    probes = choose_probes(labels, MAX_PROBES, seed)
    if not probes.any() or not clean.any() or single_photos == 0:
        return None
    unknown = np.zeros(len(labels), bool)
    unknown[np.flatnonzero(clean)[choose_unknown(int(clean.sum()), MAX_UNKNOWN, seed)]] = True
    scores = open_set_scores(vectors, labels, n_ids, unknown, probes)
    cal = calibrate_overlap(scores, n_ids, fpir, fpir, fpir, None)
    return SinglePhotoRule(cal.threshold, fpir, cal.measured_fpir, cal.known_recall, cal.known_recall_95ci,
                           single_photos, round(cal.measured_fpir * single_photos, 2), cal.unknown_probes)
