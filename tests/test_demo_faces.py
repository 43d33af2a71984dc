"""The face generator: deterministic, landmarks where the face parts are, findable by dlib."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.demo.faces import Identity, face_landmarks, render_face, render_scene
from workbench.faces.align import ARCFACE_TEMPLATE
from workbench.faces.detectors import DetectorSpec, get_detector


def test_same_arguments_same_pixels_and_different_people_differ():
    a, la = render_face(3, 17, 2)
    b, lb = render_face(3, 17, 2)
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    other, _ = render_face(3, 18, 2)
    same_person_other_photo, _ = render_face(3, 17, 3)
    assert not np.array_equal(a, same_person_other_photo)
    assert np.abs(a.astype(int) - other).mean() > 5


def test_unposed_landmarks_are_the_identity_geometry_on_the_template():
    identity = Identity.draw(0, 5)
    _, landmarks = render_face(0, 5, 0, strength=0)
    assert np.allclose(landmarks, face_landmarks(identity))
    expected = ARCFACE_TEMPLATE.copy()
    expected[[0, 1], 0] += (-identity.eye_dx / 2, identity.eye_dx / 2)
    expected[[0, 1], 1] += identity.eye_dy
    assert np.allclose(landmarks[:2], expected[:2])
    assert np.abs(landmarks - ARCFACE_TEMPLATE).max() < 5


@pytest.mark.parametrize("identity", [1, 2, 7])
def test_eye_landmarks_sit_on_the_drawn_eyes(identity):
    """The canonical face (no pose, light or noise): white of the eye either side of each eye landmark."""
    face, landmarks = render_face(0, identity, 0, strength=0)
    gray = face.mean(axis=2)
    for x, y in landmarks[:2]:
        whites = [gray[round(y), round(x + dx)] for dx in (-4.5, 4.5)]
        assert min(whites) > 200, f"no eye white beside the landmark ({whites})"
        assert gray[round(y), round(x)] < 200, "the iris should sit on the landmark"


def test_posed_landmarks_follow_the_pose():
    """Posed landmarks are a similarity transform of the unposed ones (rotation, scale, shift)."""
    _, still = render_face(0, 9, 4, strength=0)
    _, posed = render_face(0, 9, 4)
    a, b = still - still.mean(0), posed - posed.mean(0)
    scale = np.linalg.norm(b) / np.linalg.norm(a)
    u, _, vt = np.linalg.svd(b.T @ a)
    rotation = u @ vt
    assert np.allclose(scale * a @ rotation.T, b, atol=1e-6)
    assert 0.9 < scale < 1.1


def test_dlib_finds_some_scene_faces_near_their_landmarks():
    detector = get_detector(DetectorSpec.parse("dlib"))
    errors = []
    for k in range(24):
        scene, landmarks = render_scene(0, 500 + k, 0)
        found = detector.detect(scene)
        if found:
            errors.append(np.abs(np.asarray(found[0].landmarks).reshape(5, 2) - landmarks).mean())
    assert len(errors) >= 3, "dlib found almost none of the generated scene faces"
    assert np.median(errors) < 6
