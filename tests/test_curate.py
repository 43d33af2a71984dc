"""Search, dedupe, clustering, scoring and split selection on vectors with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import unit
from workbench.curate.clusters import cluster_labels, cluster_means, self_neighbours
from workbench.curate.dedupe import (
    FaceHashes,
    close_pairs,
    duplicate_pairs,
    group_labels,
    planted_cosines,
    representatives,
)
from workbench.curate.overlap import FaceScores, decide
from workbench.curate.pairs import DedupeThresholds, Hashes, hash_bits, popcount64
from workbench.curate.scoring import (
    Gallery,
    best_identity,
    neighbour_consensus,
    threshold_at_rate,
)
from workbench.curate.search import PAIR_NPROBES, SEARCH_LOSS, close_neighbours, nearest, planted_pairs
from workbench.curate.splits import choose_eval_clusters


def blobs(n_centres: int, per: int, d: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_centres, d)))
    # `noise` is the norm of the perturbation relative to the unit centre.
    jitter = noise / np.sqrt(d) * rng.normal(size=(n_centres * per, d))
    points = unit(np.repeat(centres, per, axis=0) + jitter)
    return centres, points, np.repeat(np.arange(n_centres), per)


def test_exact_search_matches_numpy():
    centres, points, _ = blobs(50, 4, 16, 0.3)
    sims, idx = nearest(points, centres, 3, exact=True)
    full = points @ centres.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :3])
    np.testing.assert_allclose(sims, np.take_along_axis(full, idx, axis=1), rtol=1e-5)


def test_approximate_search_reranks_to_exact_similarities():
    centres, points, labels = blobs(2000, 3, 32, 0.2)
    sims, idx = nearest(points, centres, 2, exact=False)
    assert (idx[:, 0] == labels).mean() > 0.99
    exact = np.einsum("nd,nd->n", points, centres[idx[:, 0]])
    np.testing.assert_allclose(sims[:, 0], exact, rtol=1e-5)


def test_planted_pairs_sit_at_the_cosines_asked():
    _, points, _ = blobs(30, 4, 16, 0.5)
    cosines = np.array([0.5, 0.7, 0.9, 0.99, 1.0], np.float32)
    queries, targets = planted_pairs(points, cosines, seed=1)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.einsum("nd,nd->n", queries, points[targets]), cosines, atol=1e-5)


def test_pairs_are_planted_as_far_apart_as_the_copies_the_rule_must_find_or_over_its_band():
    copies = (0.2, 0.7, 0.9, 0.95, 1.0)  # below `loose` (0.8), only the context rule finds a copy
    drifted = planted_cosines(0.8, copies)
    assert len(drifted) == 2000
    assert drifted.min() == pytest.approx(0.9) and drifted.max() == pytest.approx(1.0)
    assert np.median(drifted) == pytest.approx(0.95, abs=1e-3)
    assert (drifted < 0.95).mean() == pytest.approx(0.5, abs=1e-3)  # 0.9 to 0.95: the lower half
    band = planted_cosines(0.9)
    assert band.min() == pytest.approx(0.9) and band.max() == pytest.approx(1.0)
    assert np.mean(band) == pytest.approx(0.95, abs=1e-6)
    assert np.array_equal(planted_cosines(0.96, copies[:-1]), planted_cosines(0.96))  # none at 0.96 or above


@pytest.mark.slow
def test_a_close_pair_search_probes_lists_until_it_finds_pairs_as_far_apart_as_asked():
    """Pairs at cosine 0.75 among 20,000 faces (512 inverted lists): 16 lists, the default, miss
    some that exhaustive search finds; checked on planted pairs at that cosine the search probes
    more lists (until it loses at most `SEARCH_LOSS` of them, or probes the most it may) and finds
    every one. Pairs that close to identical need no more than 16."""
    _, points, _ = blobs(2000, 10, 32, 0.9)
    copies, originals = planted_pairs(points, np.full(300, 0.75, np.float32), seed=5)
    rng = np.random.default_rng(1)
    rows = rng.choice(np.setdiff1d(np.arange(len(points)), originals), 300, replace=False)
    points[rows] = copies

    def found(idx: np.ndarray) -> np.ndarray:  # either way, as `dedupe.close_pairs` takes them
        return (idx[rows] == originals[:, None]).any(axis=1) | (idx[originals] == rows[:, None]).any(axis=1)

    exhaustive = found(nearest(points, points, 5, exact=True)[1])
    assert exhaustive.all()
    assert found(nearest(points, points, 5, exact=False)[1]).mean() < 0.99
    _, idx, search = close_neighbours(points, 4, np.full(2000, 0.75, np.float32), exact=False)
    assert found(idx).all()
    assert search.nprobe > 16 and (search.lost <= SEARCH_LOSS or search.nprobe == PAIR_NPROBES[-1])
    _, _, near_identical = close_neighbours(points, 4, np.full(2000, 0.995, np.float32), exact=False)
    assert (near_identical.nprobe, near_identical.lost) == (16, 0.0)


def test_reranking_in_blocks_gives_the_same_neighbours(monkeypatch):
    """Candidates' vectors are gathered a block of rows at a time: one row per block gives what one
    block for the whole batch gives."""
    from workbench.curate import search

    centres, points, _ = blobs(500, 5, 16, 0.3)
    whole = nearest(points, centres, 3, exact=False)
    monkeypatch.setattr(search, "RERANK_FLOATS", 1)
    blocks = nearest(points, centres, 3, exact=False)
    np.testing.assert_array_equal(whole[1], blocks[1])
    np.testing.assert_allclose(whole[0], blocks[0], rtol=1e-6)


def test_more_neighbours_than_base():
    sims, idx = nearest(unit(np.ones((2, 4))), unit(np.eye(4)[:1]), 3, exact=True)
    assert idx[:, 1:].tolist() == [[-1, -1], [-1, -1]] and np.isinf(sims[:, 1:]).all()


FAR = np.uint64(0xAAAAAAAAAAAAAAAA)  # xor'd into a hash: 32 bits from it, as a stranger's


def test_popcount():
    assert popcount64(np.array([0, 1, 0xFF, 2**64 - 1], np.uint64)).tolist() == [0, 1, 8, 64]


def test_duplicates_need_near_identity_or_close_hash():
    rng = np.random.default_rng(1)
    base = unit(rng.normal(size=(4, 64)))
    near_copy = base[0] + 0.01 * unit(rng.normal(size=(1, 64)))[0]
    same_person = base[0] + 0.3 * unit(rng.normal(size=(1, 64)))[0]
    vectors = unit(np.vstack([base, near_copy, same_person, base[1]]))
    hashes = np.array([0, 2**40, 2**41, 2**42, 0, 0xFFFF0000FFFF, 2**40 + 1], np.uint64)
    # 4 = near-identical embedding of 0; 5 = same person as 0 but far hash; 6 = copy of 1, close hash
    t = DedupeThresholds(strict=0.999, loose=0.9, phash_bits=4, k=6)
    i, j, _ = duplicate_pairs(FaceHashes(Hashes(hashes, hashes ^ FAR, ~hashes, ~hashes ^ FAR), np.arange(7)),
                              t, close_pairs(vectors, t.k, -1.0))
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    cos_05 = float(vectors[0] @ vectors[5])
    assert cos_05 < 0.999
    assert (0, 4) in pairs and (1, 6) in pairs and (0, 5) not in pairs


def test_a_whole_image_hash_finds_a_copy_whose_crop_moved_but_not_across_one_image():
    """Face 1 is a web copy of face 0's photo, re-aligned off by a few pixels: its crop hash is
    far, its image's hash near. Faces 2 and 3 are two people in one photo: one image hash, which
    says nothing about them. Face 4 is 0's person in another photo: near in neither hash."""
    rng = np.random.default_rng(2)
    person = unit(rng.normal(size=(1, 64)))[0]
    vectors = unit(np.vstack([person, person + 0.35 * unit(rng.normal(size=(1, 64)))[0],
                              *unit(rng.normal(size=(1, 64))), *unit(rng.normal(size=(1, 64))),
                              person + 0.4 * unit(rng.normal(size=(1, 64)))[0]]))
    vectors[3] = unit((vectors[2] + 0.5 * unit(rng.normal(size=(1, 64)))[0])[None])[0]
    crop = np.array([0, 2**64 - 1, 0xFF, 0xFF00FF00, 0xF0F0F0F0F0], np.uint64)
    image = np.array([0x0F, 0x0F | 2**63, 2**30, 2**30, 2**50 - 1], np.uint64)
    hashes = FaceHashes(Hashes(crop, crop ^ FAR, image, image ^ FAR), np.array([0, 1, 2, 2, 3]))
    t = DedupeThresholds(strict=0.999, loose=0.8, phash_bits=4, k=4)
    cos = vectors @ vectors.T
    assert cos[0, 1] >= t.loose and cos[2, 3] >= t.loose and cos[0, 4] >= t.loose
    assert hashes.bits(np.array([0, 2, 0]), np.array([1, 3, 4])).tolist() == [1, 24, 20]
    i, j, _ = duplicate_pairs(hashes, t, close_pairs(vectors, t.k, -1.0))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(0, 1)}


def test_a_mirrored_copy_is_near_by_its_mirrored_hash():
    """Face 1 is face 0's photo flipped left to right: its hashes are far from 0's, but 0's
    mirrored hashes are near its own, whichever face of the pair is mirrored."""
    crop = np.array([0x00FF00FF00FF00FF, 0x0F0F0F0F0F0F0F0F], np.uint64)
    mirror = np.array([crop[1] ^ np.uint64(3), crop[0] ^ np.uint64(1)], np.uint64)
    image = np.array([2**63, 2**62], np.uint64)
    hashes = Hashes(crop, mirror, image, image ^ FAR)
    assert popcount64(crop[:1] ^ crop[1:]).tolist() == [32]
    assert hash_bits(hashes[np.array([0])], hashes[np.array([1])]).tolist() == [1]
    assert hash_bits(hashes[np.array([1])], hashes[np.array([0])]).tolist() == [2]


def test_groups_and_representatives():
    groups = group_labels(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert groups[0] == groups[1] == groups[2] and groups[4] == groups[5] and groups[3] not in groups[[0, 4]]
    quality = np.array([0.2, 0.9, 0.5, 0.1, np.nan, 0.3])
    rep = representatives(groups, quality, np.arange(6))
    assert rep.tolist() == [False, True, False, True, False, True]


def test_clusters_separate_people_and_do_not_chain():
    _, points, labels = blobs(5, 6, 32, 0.3, seed=2)
    found = cluster_labels(*self_neighbours(points, k=5), threshold=0.8)
    for person in range(5):
        assert len(set(found[labels == person])) == 1
    assert len(set(found)) == 5
    means = cluster_means(points, found)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, rtol=1e-5)


def small_gallery() -> Gallery:
    centres = unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
    samples = unit(np.array([[1.0, 0.2], [1.0, -0.1], [0.1, 1.0], [-0.3, 1.0]]))
    return Gallery.build(centres, np.array([True, True]), samples, np.array([0, 0, 1, 1]))


def test_identity_score_by_hand():
    gallery = small_gallery()
    q = unit(np.array([[1.0, 0.1]]))
    score, label, cos = best_identity(q, gallery, k=2)
    s1 = unit(np.array([[1.0, 0.2]]))[0]
    s2 = unit(np.array([[1.0, -0.1]]))[0]
    centre_cos = float(q[0] @ np.array([1.0, 0.0]))
    nearest_cos = max(float(q[0] @ s1), float(q[0] @ s2))
    assert label[0] == 0 and cos[0] == pytest.approx(centre_cos, rel=1e-6)
    assert score[0] == pytest.approx(0.8 * centre_cos + 0.2 * nearest_cos, rel=1e-6)


def test_identities_are_found_by_exhaustive_search_where_an_inverted_file_misses(monkeypatch):
    """A face at cosine ~0.7 to its identity's centre, among thousands of centres in random
    directions: the inverted file `nearest` picks for large problems misses some true identities;
    the identity search (shared by `wb overlap` and its calibration) finds every one."""
    import workbench.curate.search as search
    from workbench.curate.scoring import identity_candidates

    monkeypatch.setattr(search, "EXACT_LIMIT", 0)  # what a million faces would choose
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(4000, 64)))
    truth = rng.integers(0, len(centres), 3000)
    faces = unit(centres[truth] + 1.0 / np.sqrt(64) * rng.normal(size=(len(truth), 64)))
    gallery = Gallery.build(centres, np.ones(len(centres), bool), faces, truth)
    _, ivf = nearest(faces, centres, 5)
    assert (ivf == truth[:, None]).any(axis=1).mean() < 0.99  # the control: the IVF misses
    _, found = identity_candidates(faces, gallery, 5)
    assert (found == truth[:, None]).any(axis=1).all()
    _, label, _ = best_identity(faces, gallery)
    assert (label == truth).mean() > 0.99


def test_neighbour_consensus_averages_near_identical_faces():
    gallery = small_gallery()
    faces = unit(np.array([[1.0, 0.05], [1.0, 0.06], [0.0, 1.0]]))
    score, label, _ = best_identity(faces, gallery, k=2)
    averaged = neighbour_consensus(faces, gallery, score, label, 0.999, *self_neighbours(faces))
    assert averaged[0] == pytest.approx((score[0] + score[1]) / 2, rel=1e-5)
    assert averaged[2] == pytest.approx(score[2], rel=1e-6)


def test_threshold_at_rate():
    scores = np.arange(10000, dtype=np.float64)
    # 1e-3 of new impostors in expectation: 9 of these 10,000 reach it (10/10,001 expected).
    t = threshold_at_rate(scores, 1e-3)
    assert 9990 < t <= 9991 and (scores >= t).sum() == 9
    # Below one allowed impostor, the threshold sits just above the best impostor.
    t = threshold_at_rate(scores[:50], 1e-3)
    assert 49 < t < 49.001 and (scores[:50] >= t).sum() == 0
    with pytest.raises(ValueError):
        threshold_at_rate(np.array([]), 1e-3)


def test_decisions_with_cluster_evidence():
    scores = FaceScores(["a", "b", "c", "d"], np.array([5.0, 2.5, 1.0, 0.0]), np.array([0, 0, 1, 2]),
                        np.zeros(4), np.array([0, 0, 1, 2]))
    cluster_score, cluster_label = np.array([4.0, 1.0, -np.inf]), np.array([0, 1, 2])
    # Cluster 0 (faces a, b) matches identity 0 and both members are close: b goes too.
    decision, label = decide(scores, cluster_score, cluster_label, threshold=3.0, ambiguous_from=2.0)
    assert decision.tolist() == ["overlap", "overlap", "clean", "clean"]
    assert label.tolist() == [0, 0, 1, 2]
    decision, _ = decide(scores, np.full(3, -np.inf), cluster_label, threshold=3.0, ambiguous_from=2.0)
    assert decision.tolist() == ["overlap", "ambiguous", "clean", "clean"]
    # If b were not close itself, a matching cluster of mostly strangers does not drag it out.
    decision, _ = decide(scores, cluster_score, cluster_label, threshold=3.0, ambiguous_from=4.0)
    assert decision.tolist() == ["overlap", "clean", "clean", "clean"]


def test_eval_clusters_are_whole_and_deterministic():
    sizes = {f"c{i}": 1 + i % 4 for i in range(40)}
    chosen = choose_eval_clusters(sizes, 0.1, seed=3)
    assert chosen == choose_eval_clusters(sizes, 0.1, seed=3)
    total = sum(sizes.values())
    held = sum(sizes[c] for c in chosen)
    assert 0.1 * total <= held < 0.1 * total + 4
    assert choose_eval_clusters(sizes, 0.0, seed=3) == set()
