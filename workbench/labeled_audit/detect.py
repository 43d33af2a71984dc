"""From a labeled set's embeddings to its findings: the detectors of `wb audit labeled`.

Pure functions of vectors and labels (positions index the set's usable
samples), so they are tested on hand-made sets and reused by the benchmark.
The order matters: mixed labels are split into their two people before own
scores are computed, and a face's best other identity skips labels that are
the same person as its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.curate.calibration import IDENTICAL, best_other_identity
from workbench.curate.dedupe import close_pairs, group_labels
from workbench.curate.pairs import DedupeThresholds, Hashes, hash_bits, is_duplicate
from workbench.curate.scoring import Gallery
from workbench.curate.search import PairSearch, nearest
from workbench.embed.unit import unit_rows
from workbench.labeled_audit.calibrate import (
    SINGLE_FPIR,
    SameRule,
    SinglePhotoRule,
    WrongLabelRule,
    same_rule,
    several_photo_faces,
    single_photo_rule,
    split_half_centres,
    wrong_label_rule,
)
from workbench.labeled_audit.evidence import (
    Cohesion,
    Match,
    Members,
    TwoPeople,
    cohesion,
    impostor_own_scores,
    match,
    own_scores,
    pair_threshold,
    two_people,
)

PAIR_FAR = 1e-3  # share of different-person face pairs that 'match'
CALIBRATION_PAIRS = 200_000
NEIGHBOUR_IDENTITIES = 5  # centres searched per identity for one person under two labels
CANDIDATES_PER_FACE = 3  # centres searched per evaluation face for leakage

ProgressFn = Callable[[int, int], None]


@dataclass
class Findings:
    """Findings as columns: one row per face (wrong_label, duplicate) or per label pair
    (same_person, mixed_identity, leakage). `sample` and `other_sample` are positions."""

    kind: list[str] = field(default_factory=list)
    sample: list[int | None] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    other_label: list[int | None] = field(default_factory=list)
    other_sample: list[int | None] = field(default_factory=list)
    other_name: list[str | None] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, label: int, score: float, *, sample: int | None = None,
            other_label: int | None = None, other_sample: int | None = None,
            other_name: str | None = None, **evidence: Any) -> None:
        self.kind.append(kind)
        self.sample.append(sample)
        self.label.append(int(label))
        self.other_label.append(other_label)
        self.other_sample.append(other_sample)
        self.other_name.append(other_name)
        self.score.append(float(score))
        self.evidence.append(evidence)

    def count(self, kind: str) -> int:
        return self.kind.count(kind)

    def of(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.kind) if k == kind]


@dataclass
class LabelAudit:
    """Everything the detectors decided and measured for one set."""

    findings: Findings
    wrong: WrongLabelRule
    same: SameRule
    single: SinglePhotoRule | None  # one-photo labels that are another label's person
    own: np.ndarray  # per face: leave-one-out score under its label (its half, for mixed labels)
    other: np.ndarray  # per face: best centre cosine of another person's label
    impostor: np.ndarray  # sampled impostor own scores (for the report)
    trusted: np.ndarray  # faces not below the first wrong-label threshold: evidence for label pairs
    unchecked_faces: int  # faces alone under their label: nothing to check them against
    single_face_identities: int


def within_labels(vectors: np.ndarray, members: Members, threshold: float) -> list[Cohesion]:
    return [cohesion(unit_rows(vectors, members.positions(label)), threshold)
            for label in range(len(members.counts))]


def same_person_pairs(vectors: np.ndarray, members: Members, centres: np.ndarray, valid: np.ndarray,
                      within: list[Cohesion], rule: SameRule) -> list[tuple[int, int, float, Match]]:
    """(a, b, centre cosine, match) for label pairs a < b that are one person: candidates are
    each label's nearest centres, confirmed member by member."""
    ids = np.flatnonzero(valid)
    if len(ids) < 2:
        return []
    sims, idx = nearest(centres[ids], centres[ids], min(NEIGHBOUR_IDENTITIES + 1, len(ids)))
    seen, found = set(), []
    for row, a in enumerate(ids):
        for col in range(idx.shape[1]):
            if idx[row, col] < 0:
                continue
            b = int(ids[idx[row, col]])
            pair = (min(a, b), max(a, b))
            if a == b or pair in seen:
                continue
            seen.add(pair)
            a_faces, b_faces = (unit_rows(vectors, members.positions(label)) for label in pair)
            m = match(a_faces, b_faces, rule.pair_threshold, within[pair[0]], within[pair[1]],
                      rule.typical_cohesion)
            if m.low >= rule.ratio:
                found.append((pair[0], pair[1], float(sims[row, col]), m))
    return found


def single_photo_pairs(vectors: np.ndarray, labels: np.ndarray, centres: np.ndarray, valid: np.ndarray,
                       rule: SinglePhotoRule, seed: int) -> list[tuple[int, int, float]]:
    """(single label, other label, identity score) for each label with one face whose face
    reaches the rule's threshold against another identity of several photos (scored as
    `wb overlap` scores)."""
    counts = np.bincount(labels, minlength=len(centres))
    alone = np.flatnonzero(counts[labels] == 1)
    if len(alone) == 0:
        return []
    # the identities' sampled faces, as `wb overlap` keeps them: all of them at MS1MV2's size would be
    # padded to the largest identity (85k identities x ~1,000 slots x d floats)
    kept = several_photo_faces(labels, seed)  # the faces the rule was measured with
    gallery = Gallery.build(centres, valid & (counts >= 2), unit_rows(vectors, kept), labels[kept])
    score, other = best_other_identity(unit_rows(vectors, alone), labels[alone], gallery)
    hit = (score >= rule.threshold) & (other >= 0)
    return [(int(labels[i]), int(o), float(s)) for i, o, s in zip(alone[hit], other[hit], score[hit],
                                                                   strict=True)]


def mixed_labels(vectors: np.ndarray, members: Members, rule: SameRule,
                 progress: ProgressFn | None = None) -> dict[int, TwoPeople]:
    found = {}
    n = len(members.counts)
    for label in range(n):
        split = two_people(unit_rows(vectors, members.positions(label)), rule.pair_threshold,
                           rule.typical_cohesion)
        if rule.mixed(split):
            found[label] = split
        if progress and (label % 1000 == 999 or label == n - 1):
            progress(label + 1, n)
    return found


def best_other(vectors: np.ndarray, person: np.ndarray, centres: np.ndarray, valid: np.ndarray,
               centre_person: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per face, the best centre cosine among labels of another person, and that label's
    person id (-1 when none is among its `k` nearest centres)."""
    ids = np.flatnonzero(valid)
    sims, idx = nearest(vectors, centres[ids], min(k, len(ids)))
    candidate = np.where(idx >= 0, centre_person[ids[np.maximum(idx, 0)]], -1)
    usable = (idx >= 0) & (candidate != person[:, None])
    scores = np.where(usable, sims, -np.inf)
    best = np.argmax(scores, axis=1)
    rows = np.arange(len(vectors))
    return scores[rows, best], np.where(np.isfinite(scores[rows, best]), candidate[rows, best], -1)


def audit_labels(vectors: np.ndarray, labels: np.ndarray, n_ids: int, *, precision: float = 0.9,
                 same_recall: float = 0.98, single_fpir: float = SINGLE_FPIR, seed: int = 0,
                 progress: ProgressFn | None = None) -> LabelAudit:
    """Wrong labels, one person under two labels and mixed labels of one set."""
    members = Members.of(labels, n_ids)
    first = own_scores(vectors, labels, n_ids)
    threshold = pair_threshold(vectors, labels, PAIR_FAR, CALIBRATION_PAIRS, seed, first.centres,
                               split_half_centres(vectors, members, 0.5, seed))
    valid = members.counts > 0
    same = same_rule(vectors, members, first.centres, threshold, same_recall, seed)
    # Pairs of labels are compared without their likely wrong faces: one face of B filed
    # under A would otherwise make A and B look like one person.
    trusted = ~(first.own < wrong_label_rule(first.own, impostor_own_scores(
        vectors, labels, first.centres, valid, CALIBRATION_PAIRS, seed), precision).threshold)
    kept = Members.of(labels, n_ids, among=trusted)
    findings = Findings()
    # labels with one photo are the one-photo rule's: a handful of member pairs cannot tell
    pairs = same_person_pairs(vectors, kept, first.centres, valid & (members.counts >= 2),
                              within_labels(vectors, kept, threshold), same)
    for a, b, centre_cos, m in pairs:
        findings.add("same_person", a, m.low, other_label=b, matched=m.matched, pairs=m.pairs,
                     ratio=round(m.ratio, 4), centre_cosine=round(centre_cos, 4))
    joined = np.isin(labels, [label for a, b, *_ in pairs for label in (a, b)])
    single_rule = single_photo_rule(vectors, labels, n_ids, int((members.counts == 1).sum()),
                                    trusted & ~joined & (members.counts[labels] > 1), seed, single_fpir)
    singles = [] if single_rule is None else \
        single_photo_pairs(vectors, labels, first.centres, valid, single_rule, seed)
    for a, b, score in singles:
        findings.add("same_person", a, score, other_label=b, single_photo=True,
                     identity_score=round(score, 4), threshold=round(single_rule.threshold, 4),
                     expected_false_among_singles=single_rule.expected_false)
    mixed = mixed_labels(vectors, members, same, progress)
    for label, split in mixed.items():
        positions = members.positions(label)
        findings.add("mixed_identity", label, split.match.ratio, smaller_share=round(split.smaller, 3),
                     matched=split.match.matched, pairs=split.match.pairs,
                     second_person=positions[split.halves == 1].tolist())
    # Score each face under its own person: a mixed label's smaller half becomes a label of its own.
    sub = labels.astype(np.int64).copy()
    parent = list(range(n_ids))
    for label, split in mixed.items():
        sub[members.positions(label)[split.halves == 1]] = len(parent)
        parent.append(label)
    n_sub = len(parent)
    scores = own_scores(vectors, sub, n_sub)
    sub_valid = np.bincount(sub, minlength=n_sub) > 0
    impostor = impostor_own_scores(vectors, sub, scores.centres, sub_valid, CALIBRATION_PAIRS, seed)
    person = _people(n_sub, [(a, b) for a, b, *_ in pairs] + [(a, b) for a, b, _ in singles])
    other, other_person = best_other(vectors, person[sub], scores.centres, sub_valid, person)
    wrong = wrong_label_rule(scores.own, impostor, precision, other)
    flagged = wrong.flags(scores.own, other) & np.isfinite(scores.own)
    likely = {p: parent[s] for s, p in enumerate(person)}
    for i in np.flatnonzero(flagged):
        fits = other[i] > scores.own[i] and other[i] >= wrong.belongs
        findings.add("wrong_label", labels[i], scores.own[i], sample=int(i),
                     other_label=likely[int(other_person[i])] if fits else None,
                     other_score=round(float(other[i]), 4))
    counts = np.bincount(labels, minlength=n_ids)
    return LabelAudit(findings, wrong, same, single_rule, scores.own, other, impostor, trusted,
                      int(np.isnan(scores.own).sum()), int((counts == 1).sum()))


def _people(n_sub: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """A person id per (sub-)label: labels found to be one person share one."""
    return group_labels(n_sub, np.array([p[0] for p in pairs], np.int64),
                        np.array([p[1] for p in pairs], np.int64))


@dataclass(frozen=True)
class Leak:
    label: int  # S label
    eval_label: int
    match: Match
    best_cosine: float  # closest pair of faces
    copy: bool  # some face under `label` is a copy of one of the evaluation identity's photos


def leaked_identities(eval_vectors: np.ndarray, eval_labels: np.ndarray, n_eval: int,
                      vectors: np.ndarray, labels: np.ndarray, n_ids: int, rule: SameRule,
                      copy_from: float) -> list[Leak]:
    """Evaluation identities that are one person with an S identity, or whose photos are in S
    (a face at cosine >= `copy_from`, the near-duplicate threshold). Candidates: each evaluation
    face's nearest S centres and the label of its nearest S face."""
    members, eval_members = Members.of(labels, n_ids), Members.of(eval_labels, n_eval)
    centres = own_scores(vectors, labels, n_ids).centres
    ids = np.flatnonzero(members.counts > 0)
    if len(ids) == 0 or len(eval_vectors) == 0:
        return []
    _, idx = nearest(eval_vectors, centres[ids], min(CANDIDATES_PER_FACE, len(ids)))
    _, face = nearest(eval_vectors, vectors, 1)
    found: list[Leak] = []
    within_s: dict[int, Cohesion] = {}
    for e in range(n_eval):
        faces = eval_members.positions(e)
        if len(faces) == 0:
            continue
        candidates = np.union1d(ids[idx[faces][idx[faces] >= 0]], labels[face[faces, 0][face[faces, 0] >= 0]])
        group = unit_rows(eval_vectors, faces)
        within_e = cohesion(group, rule.pair_threshold)
        for s in candidates:
            s_faces = unit_rows(vectors, members.positions(s))
            if s not in within_s:
                within_s[s] = cohesion(s_faces, rule.pair_threshold)
            m = match(s_faces, group, rule.pair_threshold, within_s[s], within_e, rule.typical_cohesion)
            best = float((s_faces @ group.T).max())
            if m.low >= rule.ratio or best >= copy_from:
                found.append(Leak(int(s), e, m, best, best >= copy_from))
    return found


def duplicate_pairs(vectors: np.ndarray, t: DedupeThresholds, phash: Callable[[np.ndarray], np.ndarray],
                    same_bytes: Callable[[int, int], bool], plant: np.ndarray
                    ) -> tuple[list[tuple[int, int, float, bool]], PairSearch]:
    """(i, j, cosine, exact) for duplicate faces i < j by the `wb dedupe` rule, and how the search
    ran (checked on pairs planted at `plant`, see `dedupe.close_pairs`); crop hashes (n x 2: hash,
    mirrored hash; a labeled crop is its own photo) are computed only for the faces of close
    pairs."""
    i, j, cos, search = close_pairs(vectors, t.k, t.loose, plant)
    if len(i) == 0:
        return [], search
    involved = np.unique(np.concatenate([i, j]))
    pairs = phash(involved)
    hashes = Hashes(pairs[:, 0], pairs[:, 1], pairs[:, 0], pairs[:, 1])
    bits = hash_bits(hashes[np.searchsorted(involved, i)], hashes[np.searchsorted(involved, j)])
    dup = is_duplicate(cos, bits, t)
    return [(int(a), int(b), float(c), bool(c >= IDENTICAL and same_bytes(int(a), int(b))))
            for a, b, c in zip(i[dup], j[dup], cos[dup], strict=True)], search
