"""Calibration maths against known answers, and open-set FPIR that holds at any gallery size."""

from __future__ import annotations

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
from workbench.curate.scoring import Gallery, best_identity
from workbench.embed.compute import unit_centres
from workbench.faces.copies import web_copy


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


def test_web_copies_are_seeded_crops():
    crop = np.random.default_rng(1).integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    a = web_copy(crop, np.random.default_rng(5))
    b = web_copy(crop, np.random.default_rng(5))
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, crop)
