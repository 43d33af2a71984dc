"""The labeled audit's maths: values against hand computation, and known answers on planted sets."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import unit
from workbench.curate.dedupe import planted_cosines
from workbench.curate.pairs import DedupeThresholds
from workbench.curate.search import PairSearch
from workbench.labeled_audit import evidence
from workbench.labeled_audit.calibrate import SinglePhotoRule, wrong_label_rule
from workbench.labeled_audit.clean import plan_clean
from workbench.labeled_audit.detect import audit_labels, duplicate_pairs, leaked_identities
from workbench.labeled_audit.evidence import (
    Cohesion,
    Members,
    cohesion,
    match,
    own_scores,
    rank_in_label,
    two_people,
)

DIM = 64


def people(n: int, seed: int) -> np.ndarray:
    """`n` random, nearly orthogonal identity directions."""
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def faces_of(centres: np.ndarray, counts: list[int], spread: float,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces scattered around each person's direction; (vectors, person of each face)."""
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(len(counts)), counts)
    return unit(centres[who] + spread * rng.standard_normal((len(who), DIM))), who


def test_own_score_is_the_cosine_to_the_trimmed_centre_without_the_face():
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((7, 5)))
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = own_scores(vectors, labels, 2)
    for i in range(7):  # fewer than 5 faces per label: nothing is trimmed, plain leave-one-out
        rest = vectors[(labels == labels[i]) & (np.arange(7) != i)].sum(axis=0)
        assert scores.own[i] == pytest.approx(vectors[i] @ rest / np.linalg.norm(rest), abs=1e-5)
    alone = own_scores(vectors[:4], np.array([0, 0, 0, 1]), 2)
    assert np.isnan(alone.own[3]) and np.isfinite(alone.own[:3]).all()


def test_the_least_typical_fifth_of_a_label_is_left_out_of_its_centre():
    centre = people(1, 1)
    vectors, _ = faces_of(centre, [10], 0.05, 2)
    vectors[:2] = unit(-centre + 0.01)  # two faces of someone else
    scores = own_scores(vectors, np.zeros(10, np.int64), 1)
    assert scores.weights.tolist() == [0, 0] + [1] * 8
    assert scores.centres[0] @ centre[0] > 0.95
    assert (scores.own[:2] < -0.9).all() and (scores.own[2:] > 0.85).all()


def test_rank_in_label():
    rank, size = rank_in_label(np.array([0.5, 0.1, 0.9, 0.3, 0.2]), np.array([1, 0, 1, 0, 1]))
    assert rank.tolist() == [1, 0, 2, 1, 0] and size.tolist() == [3, 2, 3, 2, 3]


def test_match_ratio_and_its_lower_bound_by_hand():
    a = np.eye(4, dtype=np.float32)[:2]  # two orthogonal faces: no pair within a matches
    b = np.eye(4, dtype=np.float32)[[0, 0, 2]]  # b[0], b[1] equal a[0]
    within_a, within_b = cohesion(a, 0.5), cohesion(b, 0.5)
    assert (within_a, within_b) == (Cohesion(0, 1), Cohesion(1, 3))
    typical = 0.6
    m = match(a, b, 0.5, within_a, within_b, typical)
    assert (m.matched, m.pairs) == (2, 6)
    shrunk_a, shrunk_b = (0 + 10 * typical) / (1 + 10), (1 + 10 * typical) / (3 + 10)
    scale = np.sqrt(shrunk_a * shrunk_b)
    assert m.ratio == pytest.approx(2 / 6 / scale)
    p, n, z = 2 / 6, 6, 1.96  # Wilson's lower bound
    low = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert m.low == pytest.approx(low / scale)


def test_wrong_label_rule_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.0, 0.1, 200_000)
    genuine = rng.normal(0.7, 0.1, 19_000)
    wrong = rng.normal(0.0, 0.1, 1_000)  # 5% of faces wrongly labeled
    own = np.concatenate([genuine, wrong])
    rule = wrong_label_rule(own, impostor, precision=0.9)
    assert rule.wrong_share == pytest.approx(0.05, abs=0.005)
    flagged = own < rule.threshold
    precision = flagged[19_000:].sum() / flagged.sum()
    recall = flagged[19_000:].mean()
    assert precision >= 0.88 and recall == pytest.approx(rule.estimated_recall, abs=0.02)
    assert rule.estimated_precision == pytest.approx(precision, abs=0.06)


def test_two_people_under_one_label_are_told_from_one_person():
    centres = people(2, 3)
    both, _ = faces_of(centres, [12, 10], 0.05, 4)
    split = two_people(both, 0.5, 0.8)
    assert split is not None and split.halves.sum() == 10 and split.smaller == pytest.approx(10 / 22)
    assert split.match.ratio == 0 and split.centre_cosine < 0.3 and split.mixed(0.5, 0.3)
    one, _ = faces_of(centres[:1], [22], 0.05, 5)
    single = two_people(one, 0.5, 0.8)
    assert single is not None and not single.mixed(0.5, 0.3)
    assert two_people(one[:3], 0.5, 0.8) is None


def planted_set(seed: int = 0) -> dict:
    """40 people with 12 faces each under 41 labels: person 0 split over labels 0 and 40,
    persons 1 and 2 merged under label 1 (label 2 left empty), face 40 (of person 3) filed
    under person 4's label, and face 50 an exact copy of face 49."""
    centres = people(40, seed)
    vectors, person = faces_of(centres, [12] * 40, 0.06, seed + 1)
    labels = person.copy()
    labels[np.flatnonzero(person == 0)[6:]] = 40
    labels[person == 2] = 1
    labels[40] = 4
    vectors[50] = vectors[49]
    return {"vectors": vectors, "labels": labels, "person": person, "centres": centres}


def test_audit_finds_each_planted_problem_and_nothing_else():
    s = planted_set()
    audit = audit_labels(s["vectors"], s["labels"], 41)
    f = audit.findings
    wrong = [(f.sample[i], f.other_label[i]) for i in f.of("wrong_label")]
    assert wrong == [(40, 3)]  # and it says whose face it is
    assert [(f.label[i], f.other_label[i]) for i in f.of("same_person")] == [(0, 40)]
    assert [f.label[i] for i in f.of("mixed_identity")] == [1]
    second = set(f.evidence[f.of("mixed_identity")[0]]["second_person"])
    assert second in ({int(p) for p in np.flatnonzero(s["person"] == 1)},
                      {int(p) for p in np.flatnonzero(s["person"] == 2)})
    assert audit.unchecked_faces == 0


def test_a_label_with_one_face_is_reported_not_checked():
    s = planted_set()
    labels = s["labels"].copy()
    labels[100] = 2  # the empty label 2 now holds one face
    audit = audit_labels(s["vectors"], labels, 41)
    assert audit.single_face_identities == 1 and audit.unchecked_faces == 1
    assert 100 not in [audit.findings.sample[i] for i in audit.findings.of("wrong_label")]


def test_a_one_photo_label_of_a_labeled_person_is_found_and_a_stranger_is_not():
    s = planted_set()
    labels, vectors = s["labels"].copy(), s["vectors"].copy()
    owner = int(labels[100])  # face 100's person keeps 11 photos under their own label
    labels[100] = 2  # ... and one alone under label 2
    stranger = np.flatnonzero(s["person"] == 7)[0]
    vectors[stranger] = people(50, 11)[49]  # someone new, alone under label 41
    labels[stranger] = 41
    audit = audit_labels(vectors, labels, 42)
    f = audit.findings
    singles = [(f.label[i], f.other_label[i]) for i in f.of("same_person")
               if f.evidence[i].get("single_photo")]
    assert singles == [(2, owner)]
    # the label pair is the one-photo rule's finding alone: the rule for labels of several photos
    # does not judge a label from one photo's handful of member pairs
    about_2 = [i for i in f.of("same_person") if 2 in (f.label[i], f.other_label[i])]
    assert [f.evidence[i].get("single_photo") for i in about_2] == [True]
    rule = audit.single
    assert rule.single_photos == 2 and rule.fpir == 0.01  # as wb overlap's default
    assert rule.expected_false == pytest.approx(rule.measured_fpir * 2, abs=0.01)
    assert rule.known_recall > 0.9  # lone photos of labeled people, simulated on the set
    assert 100 not in [f.sample[i] for i in f.of("wrong_label")]


def test_a_one_photo_rate_too_small_to_measure_says_so():
    rule = SinglePhotoRule(0.8, 0.001, 0.0, 0.02, (0.0, 0.1), 1713, 0.0, unknown_probes=1500)
    assert "below 2 / the 1,500 faces that played other people" in rule.notes()[0]
    assert SinglePhotoRule(0.5, 0.01, 0.009, 0.95, (0.9, 0.98), 1713, 15.2, unknown_probes=1500).notes() == []


def test_leaked_evaluation_people_are_found_by_identity_and_by_copy():
    s = planted_set()
    audit = audit_labels(s["vectors"], s["labels"], 41)
    rng = np.random.default_rng(9)
    # eval: person 5 (other photos of someone in S), person 41 and 42 (new people), and a copy
    # of face 70 (person 5 too, filed as a one-photo eval identity)
    new_people = people(45, 7)[43:]
    eval_vectors = unit(np.concatenate([s["centres"][[5, 5, 5]], new_people[[0, 0, 1, 1]]])
                        + 0.06 * rng.standard_normal((7, DIM)))
    eval_vectors = np.concatenate([eval_vectors, s["vectors"][[70]]])
    eval_labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    leaks = leaked_identities(eval_vectors, eval_labels, 4, s["vectors"], s["labels"], 41, audit.same,
                              copy_from=0.99)
    found = sorted((leak.label, leak.eval_label, leak.copy) for leak in leaks)
    assert found == [(5, 0, False), (5, 3, True)]


def test_exact_and_near_duplicates_by_the_dedupe_rule():
    s = planted_set()
    vectors = s["vectors"].copy()
    vectors[20] = unit(vectors[21:22] + 0.02 * np.random.default_rng(1).standard_normal((1, DIM)))[0]
    vectors[30] = unit(vectors[31:32] + 0.02 * np.random.default_rng(2).standard_normal((1, DIM)))[0]
    hashes = np.arange(len(vectors), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    mirrored = hashes * np.uint64(0xD1B54A32D192ED03)
    hashes[20] = hashes[21] ^ np.uint64(1)  # a near copy: close embedding, one hash bit apart
    hashes[30] = mirrored[31] ^ np.uint64(3)  # a mirrored copy: near 31's mirrored hash only

    def phash(positions: np.ndarray) -> np.ndarray:
        return np.stack([hashes[positions], mirrored[positions]], axis=1)

    t = DedupeThresholds(strict=0.9999, loose=0.95, phash_bits=4, k=4)
    pairs, search = duplicate_pairs(vectors, t, phash, lambda a, b: {a, b} == {49, 50},
                                    planted_cosines(t.loose))
    assert search == PairSearch()  # 60 faces: searched exhaustively
    assert [(i, j, exact) for i, j, _, exact in pairs] == [(20, 21, False), (30, 31, False), (49, 50, True)]


def test_clean_plan_drops_merges_and_honours_reviews():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    sample_idx = np.arange(100, 108)
    findings = [
        {"kind": "wrong_label", "sample_idx": 101, "label": 0, "other_label": 1, "other_sample_idx": None},
        {"kind": "wrong_label", "sample_idx": 102, "label": 0, "other_label": None, "other_sample_idx": None},
        {"kind": "duplicate", "sample_idx": 104, "label": 1, "other_label": 1, "other_sample_idx": 103},
        {"kind": "same_person", "sample_idx": None, "label": 1, "other_label": 2, "other_sample_idx": None},
        {"kind": "leakage", "sample_idx": None, "label": 3, "other_label": None, "other_sample_idx": None},
    ]
    tags = {102: {"keep"}, 105: {"wrong_label"}}
    plan = plan_clean(labels, sample_idx, ["a", "b", "c", "d"], findings, tags,
                      drop=["wrong_label", "duplicate", "leakage"], merge=["same_person"])
    assert plan.new_label.tolist() == [0, -1, 0, 1, -1, -1, 1, -1]
    assert plan.new_identities == ["a", "b"]
    assert plan.reasons == {1: ["wrong_label"], 4: ["duplicate"], 5: ["wrong_label (review)"],
                            7: ["leakage"]}
    assert (plan.kept_by_review, plan.dropped_by_review, plan.merged_pairs) == (1, 1, 1)
    unmerged = plan_clean(labels, sample_idx, ["a", "b", "c", "d"], findings, {}, drop=[], merge=[])
    assert unmerged.new_label.tolist() == labels.tolist() and unmerged.merged_pairs == 0


def test_members_group_positions_by_label():
    members = Members.of(np.array([2, 0, 2, 1]), 4)
    assert members.counts.tolist() == [1, 1, 2, 0]
    assert members.positions(2).tolist() == [0, 2] and members.positions(3).tolist() == []
    among = Members.of(np.array([2, 0, 2, 1]), 4, among=np.array([False, True, True, True]))
    assert among.counts.tolist() == [1, 1, 1, 0]
    assert among.positions(2).tolist() == [2] and among.positions(0).tolist() == [1]  # whole-set positions


def test_own_scores_are_the_same_computed_a_block_of_faces_at_a_time(monkeypatch):
    s = planted_set()
    whole = own_scores(s["vectors"], s["labels"], 41)
    monkeypatch.setattr(evidence, "CHUNK", 7)  # 480 faces in 69 blocks, labels across block edges
    blocks = own_scores(s["vectors"], s["labels"], 41)
    assert np.allclose(blocks.sums, whole.sums) and np.allclose(blocks.own, whole.own, atol=1e-6)
    assert np.array_equal(blocks.weights, whole.weights)


def test_an_audit_of_vectors_held_in_half_precision_finds_the_same():
    """At MS1MV2's size the audit holds float16 vectors; what it finds must not change."""
    s = planted_set()
    full, half = (audit_labels(s["vectors"].astype(dtype), s["labels"], 41)
                  for dtype in (np.float32, np.float16))
    assert half.findings.kind == full.findings.kind and half.findings.label == full.findings.label
    assert half.findings.sample == full.findings.sample
    assert half.findings.other_label == full.findings.other_label
    assert np.allclose(half.own, full.own, atol=2e-3, equal_nan=True)
    t = DedupeThresholds(strict=0.9999, loose=0.95, phash_bits=4, k=4)
    hashes = np.arange(len(s["vectors"]), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    pairs, _ = duplicate_pairs(s["vectors"].astype(np.float16), t,
                               lambda p: np.stack([hashes[p], ~hashes[p]], 1), lambda a, b: True,
                               planted_cosines(t.loose))
    assert [(i, j, exact) for i, j, _, exact in pairs] == [(49, 50, True)]  # identical rows: cosine 1
