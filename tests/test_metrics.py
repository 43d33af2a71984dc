"""Metric functions against scikit-learn and hand-worked cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from workbench.curate.search import nearest
from workbench.embed.unit import unit_rows
from workbench.evaluate.metrics import (
    auroc,
    fpr_at_tpr,
    open_set_identification,
    open_set_scores,
    pairwise_cosine_distances,
    roc_curve,
    softmax_stats,
    tar_at_far,
    verification_accuracy,
)


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(1, 1, 300), 1)
    neg = np.round(rng.normal(0, 1, 500), 1)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(500)], np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_by_hand():
    # pairs: (3>1) (3>2) (2>1) (2=2 half) -> 3.5 / 4
    assert auroc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.875)


def test_fpr_at_95_tpr_by_hand():
    pos = np.arange(1, 21, dtype=float)  # 20 positives; 95% keeps the top 19: threshold 2
    neg = np.array([0.5, 1.5, 2.0, 3.0])
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(0.5)


def test_roc_curve_ends():
    fpr, tpr = roc_curve(np.array([0.9, 0.4]), np.array([0.5, 0.1]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert list(zip(fpr, tpr, strict=True)) == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]


def test_tar_at_far_by_hand():
    impostor = np.arange(1000, dtype=float) / 1000  # top 1 of 1000 at FAR 1e-3 is 0.999
    genuine = np.array([0.9995, 0.9999, 0.5, 0.99])
    assert tar_at_far(genuine, impostor, 1e-3) == pytest.approx(0.5)
    assert tar_at_far(genuine, impostor, 1e-4) is None


def test_verification_accuracy_separable_and_cross_validated():
    scores = np.r_[np.linspace(0.6, 1, 50), np.linspace(0, 0.4, 50)]
    issame = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    folds = np.arange(100) % 10
    mean, std, threshold = verification_accuracy(scores, issame, folds)
    assert mean == 1.0 and std == 0.0 and 0.4 < threshold <= 0.6


def test_dir_at_fpir_by_hand():
    unknown = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    # FPIR 0.1: one unknown of ten may pass -> threshold 0.95 (strictly above it passes nothing)
    known = np.array([0.99, 0.97, 0.96, 0.5])
    correct = np.array([True, False, True, True])
    assert open_set_identification(known, correct, unknown, 0.1) == pytest.approx(0.5)
    assert open_set_identification(known, correct, unknown, 0.2) == pytest.approx(0.5)


def test_centre_distances_exact_and_sampled():
    centres = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    d, bound = pairwise_cosine_distances(centres)
    assert sorted(d.round(6)) == [1.0, 1.0, 2.0] and bound is None
    rng = np.random.default_rng(0)
    many = rng.normal(size=(3000, 16))
    exact, _ = pairwise_cosine_distances(many)
    sampled, bound = pairwise_cosine_distances(many, exact_limit=100, n_pairs=200_000)
    assert abs(sampled.mean() - exact.mean()) <= bound


def test_softmax_stats_by_hand():
    p, arg, h = softmax_stats(np.array([[0.0, np.log(3.0)]]))
    assert p[0] == pytest.approx(0.75) and arg[0] == 1
    assert h[0] == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))


def test_open_set_scores_include_the_energy_score_by_hand():
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    emb = np.array([[0.6, 0.8]])
    scores = open_set_scores(emb, centres, 10.0, chunk_elements=1)
    assert scores.energy[0] == pytest.approx(np.log(np.exp(6.0) + np.exp(8.0)))
    assert scores.max_cos[0] == pytest.approx(0.8) and scores.pred[0] == 1


def test_unit_rows_upcast_half_precision_and_renormalise():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((6, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    same = unit_rows(v, np.array([2, 0]))
    assert same.dtype == np.float32 and np.array_equal(same, v[[2, 0]])  # float32: as stored
    half = unit_rows(v.astype(np.float16), slice(0, 6))
    assert half.dtype == np.float32 and np.allclose(half, v, atol=1e-3)
    # a float16 row is not unit length any more; renormalised, a row and its copy score cosine 1
    assert abs(float(np.sum(v.astype(np.float16).astype(np.float32) ** 2, axis=1).max()) - 1) > 1e-6
    assert np.allclose(np.sum(half * half, axis=1), 1, atol=1e-6)


def test_approximate_search_over_half_precision_vectors_matches_float32():
    """The IVF path re-ranks candidates gathered as (queries, candidates, d) blocks: a float16 base
    must give the float32 answer (a block once normalised along the wrong axis, inflating cosines)."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3000, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[:200] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    full = nearest(queries, base, 5, exact=False)
    sims, idx = nearest(queries.astype(np.float16), base.astype(np.float16), 5, exact=False)
    assert np.allclose(sims, np.einsum("nd,nkd->nk", queries, base[idx]), atol=2e-3)  # true cosines
    assert np.allclose(sims[:, 0], full[0][:, 0], atol=2e-3) and (idx[:, 0] == full[1][:, 0]).all()
