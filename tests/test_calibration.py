"""Calibration maths against known answers, and open-set FPIR that holds at any gallery size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import unit
from workbench.curate.calibration import (
    MAX_PROBES,
    PairEvidence,
    calibrate_dedupe,
    calibrate_overlap,
    choose_probes,
    choose_unknown,
    open_set_scores,
    single_face_scores,
    wilson,
)
from workbench.curate.pairs import DedupeThresholds
from workbench.curate.scoring import Gallery, best_identity, threshold_at_rate
from workbench.embed.compute import unit_centres
from workbench.faces.context import best_correlations
from workbench.faces.copies import TRANSFORMS, as_photo, copy_pair, edit_photo
from workbench.faces.detect import aligned_centre_face
from workbench.faces.detectors import DetectorSpec, get_detector
from workbench.ingest.hashing import hamming, phash64

SHARED = Path(__file__).resolve().parents[2] / "shared"


def people(n_ids: int, per: int, rng: np.random.Generator, d: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Faces of synthetic identities: genuine cosine about 0.72, as a real 128-d model's."""
    means = unit(rng.normal(size=(n_ids, d)))
    noise = 0.62 / np.sqrt(d) * rng.normal(size=(n_ids * per, d))
    return unit(np.repeat(means, per, axis=0) + noise), np.repeat(np.arange(n_ids), per)


def test_wilson_interval_by_hand():
    low, high = wilson(0, 100)
    assert low == 0.0 and high == pytest.approx(1.96**2 / (100 + 1.96**2), rel=1e-6)
    low, high = wilson(5, 10)
    assert low == pytest.approx(1 - high) and 0.2 < low < 0.25


def test_probes_one_face_per_identity_with_two():
    labels = np.array([0, 0, 0, 1, 2, 2, 3])
    mask = choose_probes(labels, MAX_PROBES, seed=1)
    assert sorted(labels[mask].tolist()) == [0, 2]
    assert choose_probes(labels, 1, seed=1).sum() == 1
    assert choose_unknown(7, 3, seed=0).sum() == 3


def test_known_and_unknown_roles_by_hand():
    # Identity 0 at +x, identity 1 at +y, identity 2 at -x; two faces each.
    v = unit(np.array([[1, 0.1], [1, -0.1], [0.1, 1], [-0.1, 1], [-1, 0.1], [-1, -0.1]]))
    labels = np.repeat(np.arange(3), 2)
    unknown = np.array([True, False, False, False, False, False])
    known = np.array([True, False, True, False, True, False])
    scores = open_set_scores(v, labels, 3, unknown, known)
    # Face 0 with identity 0 left out: identity 1 is its best (centre +y, nearest face (-0.1, 1)).
    centre1 = v[0] @ unit(v[2:4].sum(0, keepdims=True))[0]
    assert scores.unknown[0] == pytest.approx(0.8 * centre1 + 0.2 * max(v[0] @ v[2], v[0] @ v[3]), rel=1e-5)
    # Known probes find their own identity through their one remaining face.
    assert scores.known_right.all()
    assert scores.known[0] == pytest.approx(v[0] @ v[1], rel=1e-5)


@pytest.mark.slow
def test_calibrated_fpir_holds_at_100_and_50000_identities():
    """Unknown people never seen in calibration are flagged at the calibrated rate, whatever the
    gallery size; a per-comparison rate would flag every one of them at 50,000 identities."""
    rng = np.random.default_rng(0)
    measured, thresholds = [], []
    for n_ids in (100, 50_000):
        vectors, labels = people(n_ids, 5, rng)
        scores = open_set_scores(vectors, labels, n_ids, choose_unknown(len(labels), 20_000, 0),
                                 choose_probes(labels, MAX_PROBES, 0))
        cal = calibrate_overlap(scores, n_ids, fpir=0.01, ambiguous_fpir=0.02, copy_fpir=0.001,
                                copy_impostors=None)
        assert cal.measured_fpir <= 0.01 and cal.known_recall > 0.99
        centres, valid = unit_centres(vectors, labels, n_ids)
        gallery = Gallery.build(centres, valid, vectors, labels)
        strangers, _ = people(4000, 1, rng)
        best, _, _ = best_identity(strangers, gallery)
        rate = float((best >= cal.threshold).mean())
        # Within the interval the calibration reports (by identity: faces of one person are
        # not independent evidence, so 100 identities give a wide one), give or take this
        # test's own sampling error on 4,000 strangers.
        low, high = cal.measured_fpir_95ci
        slack = 2 * np.sqrt(0.01 * 0.99 / len(strangers))
        assert low - slack <= rate <= high + slack, (n_ids, rate, cal.measured_fpir_95ci)
        measured.append(rate)
        thresholds.append(cal.threshold)
    assert thresholds[1] > thresholds[0] + 0.05  # more identities, more chances: a higher bar
    assert 0.006 <= measured[1] <= 0.014


def test_single_face_scores_by_hand():
    base = unit(np.array([[1, 0], [1, 0.2], [0, 1], [0.6, 0.8]]))
    labels = np.array([0, 0, 1, 1])
    other, same, partner = single_face_scores(base[[0, 2]], labels[[0, 2]], np.array([0, 2]), base, labels)
    # Face 0: best other identity is face 3 (0.6); its own other face is face 1.
    assert other[0] == pytest.approx(0.6, abs=1e-6) and partner[0] == 1
    assert same[0] == pytest.approx(float(base[0] @ base[1]), abs=1e-6)
    # Face 2: best other identity is face 1; its own other face is face 3 (0.8).
    assert other[1] == pytest.approx(float(base[2] @ base[1]), abs=1e-6)
    assert partner[1] == 3 and same[1] == pytest.approx(0.8, abs=1e-6)


def test_dedupe_calibration_known_answer():
    # Copies: cosines 0.90..0.999, hashes within 4 bits. Distinct photos: cosines up to 0.95,
    # hashes 20+ bits apart except two that are close in hash but far in cosine.
    copies = PairEvidence(np.linspace(0.90, 0.999, 100), np.full(100, 3))
    distinct_cos = np.concatenate([np.linspace(0.3, 0.95, 998), [0.5, 0.6]])
    distinct_bits = np.concatenate([np.full(998, 25), [2, 2]])
    cal = calibrate_dedupe(copies, PairEvidence(distinct_cos, distinct_bits), recall=0.99, merge_rate=0.01)
    # 1% / 2 of 1000 distinct pairs: 4 reach `strict` here (5 of 1001 expected on new pairs).
    assert (distinct_cos >= cal.strict).sum() == 4
    assert cal.loose == pytest.approx(np.quantile(copies.cosine, 0.01, method="lower"))
    assert 3 <= cal.phash_bits < 25
    assert cal.recall == 1.0 and cal.merge_rate == pytest.approx(0.004)
    # how far the copies drifted, for checking the pair search: each copy's cosine, ascending
    np.testing.assert_allclose(cal.copy_cosines, np.linspace(0.90, 0.999, 100), atol=1e-4)


def test_loose_and_hash_bits_are_chosen_together_when_distinct_photos_are_close():
    """Near-identical shots: 1.5% of a set's distinct pairs sit just above the copies' 1% cosine
    with identical hashes (5% more are close in cosine only). Taking `loose` from the copies
    alone leaves no hash bits to spend; searched together, `loose` moves above those shots and
    the hash finds the copies between it and `strict`."""
    rng = np.random.default_rng(3)
    copies = PairEvidence(rng.uniform(0.80, 1.0, 1000), rng.integers(0, 5, 1000))
    distinct = PairEvidence(np.r_[rng.uniform(0.80, 0.85, 30), rng.uniform(0.90, 0.99, 100),
                                  rng.uniform(0.3, 0.79, 1870)],
                            np.r_[np.zeros(30, int), rng.integers(20, 33, 100), rng.integers(10, 33, 1870)])
    cal = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.01)
    assert 0.83 <= cal.loose < cal.strict and 4 <= cal.phash_bits < 20  # above most of those shots
    assert cal.merge_rate <= 0.01
    assert cal.recall == pytest.approx((copies.cosine >= cal.loose).mean())  # every copy above loose
    assert cal.recall > 0.7
    # `loose` at the copies' 1% leaves only identical hashes (0 bits) within the budget
    at_quantile = DedupeThresholds(cal.strict, float(np.quantile(copies.cosine, 0.01)), 0)
    assert copies.merged(at_quantile).mean() < cal.recall - 0.4


def test_loose_stays_above_what_other_people_reach():
    """Copies whose hashes match but whose embeddings moved (cosine 0.3-0.99) would pull `loose`
    down to 0.3 on hashes alone; a hash can match across people (two faces of one group photo),
    so `loose` stops where 0.5% of faces reach their most similar other person."""
    rng = np.random.default_rng(6)
    copies = PairEvidence(rng.uniform(0.3, 0.99, 1000), np.zeros(1000, int))
    distinct = PairEvidence(rng.uniform(0.5, 0.9, 1000), rng.integers(16, 33, 1000))
    free = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005)
    other_person = rng.uniform(0.2, 0.6, 2000)
    held = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005, other_person=other_person)
    assert free.loose < 0.32 and free.loose_floor == -1
    reach = (other_person >= held.loose_floor).mean()
    assert reach <= 0.005 < (other_person >= held.loose_floor - 0.01).mean()
    assert held.loose == pytest.approx(held.loose_floor, abs=0.02) and held.loose >= held.loose_floor
    assert held.recall < free.recall


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_web_copies_are_seeded_edits_of_the_photo(transform):
    photo = as_photo(np.random.default_rng(1).integers(0, 255, size=(112, 112, 3), dtype=np.uint8))
    a = edit_photo(photo, transform, np.random.default_rng(5))
    b = edit_photo(photo, transform, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.ndim == 3 and not np.array_equal(a, photo)
    if transform in ("rescale", "crop"):
        assert a.shape[0] < photo.shape[0] and a.shape[1] < photo.shape[1]
    if transform == "crop":
        assert a.shape[0] >= 0.92 * photo.shape[0] - 1  # at most 8% cut away
    if transform == "mirror":  # the same pixels, left for right (JPEG aside)
        assert np.abs(a[:, ::-1].astype(int) - photo).mean() < np.abs(a.astype(int) - photo).mean()


def test_a_copy_is_refound_by_the_detector_on_a_real_face():
    face = next(iter(sorted((SHARED / "data" / "celeba200").glob("*/*.jpg"))), None)
    if face is None:
        pytest.skip("needs ../shared/data/celeba200 (see the README)")
    yunet = get_detector(DetectorSpec.parse("yunet"))
    rgb = cv2.cvtColor(cv2.imread(str(face)), cv2.COLOR_BGR2RGB)
    crop = aligned_centre_face(rgb, yunet.detect)
    pair = copy_pair(crop, "rescale", np.random.default_rng(0), yunet.detect)
    assert pair.refound and pair.original.shape == pair.copy.shape == (112, 112, 3)
    # re-found and re-aligned: close to the crop it came from, not equal to it
    assert 0 < np.abs(pair.original.astype(int) - crop).mean() < 30
    # the whole photos, rescaled and re-encoded, hash alike; another face's photo does not
    other = cv2.cvtColor(cv2.imread(str(sorted((SHARED / "data" / "celeba200").glob("*/*.jpg"))[-1])),
                         cv2.COLOR_BGR2RGB)
    someone_else = phash64(as_photo(aligned_centre_face(other, yunet.detect)))
    photo, copy = (phash64(p) for p in pair.photos)
    assert hamming(photo, copy) <= 10 < hamming(photo, someone_else)
    assert np.array_equal(pair.photos[0], as_photo(crop))
    # made from the photo itself (a set registered from photos): the copy shares its surroundings,
    # which the crop set in a mirrored border (above) hardly has
    pair = copy_pair(crop, "crop", np.random.default_rng(0), yunet.detect, rgb)
    assert pair.refound and pair.photos[0] is rgb
    assert best_correlations(np.stack(pair.contexts), np.array([0]), np.array([1]))[0] >= 0.96
    # no face to find: the crop itself, and an edited copy with simulated re-alignment error
    blank = np.full((112, 112, 3), 90, np.uint8)
    pair = copy_pair(blank, "tone", np.random.default_rng(0), yunet.detect)
    assert not pair.refound and pair.original is blank and pair.copy.shape == (112, 112, 3)


def test_the_hash_rule_reaches_the_copy_whose_embedding_drifted_furthest():
    """One copy in 200 drifted to cosine 0.55 (a re-detection gone wrong) but hashes as its
    photo: the hash rule's cosine gate goes down to it, not only to the copies' 1st percentile,
    and spends no more hash bits than finding it takes (2: more would only merge photos)."""
    rng = np.random.default_rng(3)
    copies = PairEvidence(np.r_[np.full(199, 0.95), 0.55], np.full(200, 2))
    distinct = PairEvidence(rng.uniform(0.2, 0.7, 400), rng.integers(12, 33, 400))
    cal = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005)
    assert cal.recall == 1.0 and cal.merge_rate == 0.0
    assert cal.loose == pytest.approx(0.55) and cal.phash_bits == 2


def test_photos_filed_twice_or_in_bursts_are_not_distinct_photos():
    """A labeled set holding one photo twice (cosine 1, same hash), or near-identical frames of a
    burst (nearer than the median copy in both cosine and hash): those pairs are copies, not two
    photos, so they are not merges that use up the budget, and the copies are found. Pairs near
    in one measure only are still distinct photos."""
    rng = np.random.default_rng(4)
    copies = PairEvidence(np.r_[np.ones(10), rng.uniform(0.85, 0.99, 190)], np.r_[np.zeros(10, int),
                                                                                 rng.integers(0, 6, 190)])
    distinct = PairEvidence(np.r_[np.ones(3), [0.99, 0.985], rng.uniform(0.3, 0.8, 295)],
                            np.r_[np.zeros(3, int), [1, 2], rng.integers(10, 33, 295)])
    cal = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005)
    assert cal.strict < 0.81  # just above the highest of the 295 distinct photos, not above 0.99
    assert cal.recall == 1.0 and cal.distinct_like_copies == 5 and cal.distinct_pairs == 295
    near_in_cosine_only = PairEvidence(np.r_[[0.99, 0.985], rng.uniform(0.3, 0.8, 298)],
                                       np.r_[[30, 28], rng.integers(10, 33, 298)])
    cal = calibrate_dedupe(copies, near_in_cosine_only, recall=0.99, merge_rate=0.005)
    assert cal.distinct_like_copies == 0 and cal.strict > 0.985


def _probes(centres: np.ndarray, noise: float, n: int, rng: np.random.Generator):
    truth = rng.integers(0, len(centres), n)
    d = centres.shape[1]
    return unit(centres[truth] + noise / np.sqrt(d) * rng.normal(size=(n, d))), truth


@pytest.mark.parametrize("layout", ["clustered", "random"])
def test_the_identity_search_is_chosen_by_what_it_loses(monkeypatch, layout):
    """Centres grouped in 40 looks (4,000 centres, 102 inverted lists): probing 2 lists loses
    identities, 4 lose none, so 4 is chosen. Centres in random directions, faces at cosine
    ~0.7: 4 lists lose identities too, so the search stays exhaustive."""
    import workbench.curate.calibration as calibration

    monkeypatch.setattr(calibration, "IDENTITY_NPROBES", (2, 4))
    rng = np.random.default_rng(0)
    if layout == "clustered":
        looks = unit(rng.normal(size=(40, 64)))
        centres, noise = unit(looks[rng.integers(0, 40, 4000)] + 0.1 * rng.normal(size=(4000, 64))), 0.5
    else:
        centres, noise = unit(rng.normal(size=(4000, 64))), 1.0
    faces, truth = _probes(centres, noise, 2000, rng)
    gallery = Gallery.build(centres, np.ones(len(centres), bool), faces, truth)
    _, exact = calibration.identity_candidates(faces, gallery, calibration.TOP_K)
    nprobe, lost = calibration.identity_search(faces, truth, gallery, exact)
    if layout == "clustered":
        assert nprobe == 4 and lost <= calibration.SEARCH_LOSS
    else:
        assert (nprobe, lost) == (0, 0.0)


def test_the_context_rule_is_calibrated_on_pairs_the_hashes_call_two_photos():
    """A labeled set holding 3% of its own photos again at other crops (hashes within 2 bits,
    context 0.97-0.99) would, counted as distinct photos, push the context threshold above every
    copy. Calibrated on the pairs whose hashes differ more than 95% of copies' (the others are
    the hash rule's to judge), it sits where merge_rate/2 of those reach; and other people's
    contexts bound it too (a plain background looks alike across people)."""
    rng = np.random.default_rng(8)
    copies = PairEvidence(rng.uniform(0.3, 0.99, 1000), rng.integers(0, 6, 1000),
                          np.r_[rng.uniform(0.97, 1.0, 950), rng.uniform(0.5, 0.97, 50)])
    distinct = PairEvidence(rng.uniform(0.3, 0.8, 2000),
                            np.r_[rng.integers(0, 3, 60), rng.integers(12, 33, 1940)],
                            np.r_[rng.uniform(0.97, 0.99, 60), rng.uniform(0.2, 0.95, 1940)])
    cal = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005)
    apart = distinct.context[60:]
    assert cal.context == pytest.approx(threshold_at_rate(apart, 0.0025))
    assert cal.context < 0.96 and cal.context_pairs == 1940
    assert cal.context_recall == pytest.approx((copies.context >= cal.context).mean())
    assert cal.context_recall >= 0.95
    assert cal.merge_rate <= 0.005  # the set's own copies are not counted as context merges
    bounded = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005,
                               other_context=np.r_[rng.uniform(0.2, 0.8, 1980), np.full(20, 0.985)])
    assert bounded.context > 0.985 and bounded.context_recall < cal.context_recall


def test_pairs_that_share_too_little_leave_the_context_rule_at_its_default():
    """Where every context correlation is -1 (no pair shared enough of its frame to say), that
    must not become a threshold of -1 that merges every candidate."""
    rng = np.random.default_rng(9)
    copies = PairEvidence(rng.uniform(0.8, 1.0, 200), rng.integers(0, 5, 200), np.full(200, -1.0))
    distinct = PairEvidence(rng.uniform(0.3, 0.8, 500), rng.integers(12, 33, 500), np.full(500, -1.0))
    cal = calibrate_dedupe(copies, distinct, recall=0.99, merge_rate=0.005, other_context=np.full(300, -1.0))
    assert cal.context == DedupeThresholds.context and cal.context_pairs == 0 and cal.context_recall == 0
