import numpy as np
import pytest

from workbench.faces.align import ARCFACE_TEMPLATE, CROP_SIZE, align_face, similarity_transform


def test_two_point_transform_by_hand():
    # (0,0)->(1,1) and (1,0)->(1,3): scale 2, rotation +90 degrees, translation (1,1).
    m = similarity_transform(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [1.0, 3.0]]))
    np.testing.assert_allclose(m, [[0.0, -2.0, 1.0], [2.0, 0.0, 1.0]], atol=1e-12)


def test_recovers_a_known_similarity_exactly():
    angle, scale, shift = np.deg2rad(25.0), 2.7, np.array([130.0, -42.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # Landmarks of a face in a photo, made from the template by the inverse mapping.
    photo = (ARCFACE_TEMPLATE - shift) @ np.linalg.inv(scale * rot).T
    m = similarity_transform(photo, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_noisy_points_get_the_least_squares_similarity():
    """Against an independent solution: the similarity x' = a x - b y + tx, y' = b x + a y + ty is
    linear in (a, b, tx, ty), so numpy's least squares solves it directly."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        photo = ARCFACE_TEMPLATE * rng.uniform(0.3, 3) + rng.normal(0, 4, (5, 2)) + rng.uniform(-200, 200, 2)
        x, y = photo[:, 0], photo[:, 1]
        one, zero = np.ones(5), np.zeros(5)
        design = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        target = np.concatenate([ARCFACE_TEMPLATE[:, 0], ARCFACE_TEMPLATE[:, 1]])
        a, b, tx, ty = np.linalg.lstsq(design, target, rcond=None)[0]
        np.testing.assert_allclose(similarity_transform(photo, ARCFACE_TEMPLATE),
                                   [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_no_reflection_for_mirrored_points():
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    m = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0


def test_rejects_degenerate_points():
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), ARCFACE_TEMPLATE)


def test_align_face_puts_landmarks_on_the_template():
    # Bright dots at known landmark positions in a rotated, scaled "photo".
    angle, scale = np.deg2rad(-15.0), 0.5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    photo_points = ARCFACE_TEMPLATE @ (rot / scale).T + np.array([150.0, 90.0])
    image = np.zeros((400, 400, 3), np.uint8)
    for x, y in photo_points:
        image[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3] = 255
    crop = align_face(image, photo_points)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    for x, y in ARCFACE_TEMPLATE:
        patch = crop[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3]
        assert patch.max() > 200, (x, y)
