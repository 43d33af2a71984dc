"""Generated face-like images: many identities, deterministic, with known landmarks.

An identity is a fixed draw of head shape, skin, hair, eye and brow style,
facial geometry (eye spacing and height, nose length, mouth width), a skin
texture and accessories. An image of it adds pose (rotation, scale, shift),
expression (smile, open mouth, blink), lighting, occlusion and sensor noise.
Faces are drawn at 4x in the ArcFace template's frame and warped by the pose,
so the five landmarks of every image are known exactly. `render_scene` puts a
face into a larger picture for the detection path.

Everything follows from (seed, identity, image): the same arguments give the
same pixels on every machine (OpenCV drawing, NumPy's PCG64).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from workbench.faces.align import ARCFACE_TEMPLATE, CROP_SIZE

SUPER = 2  # drawing resolution factor (anti-aliasing)


@dataclass(frozen=True)
class Identity:
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    head_axes: tuple[float, float]
    hair_height: float
    hair_sides: float
    brow_thickness: float
    brow_tilt: float
    eye_dx: float
    eye_dy: float
    nose_dy: float
    mouth_dx: float
    mouth_dy: float
    texture: np.ndarray  # 8x8 skin blotches, multiplied into the skin
    glasses: bool
    beard: bool

    @classmethod
    def draw(cls, seed: int, identity: int) -> Identity:
        rng = np.random.default_rng([seed, identity, 0])
        tone = rng.uniform(0.25, 0.95)
        skin = (rng.uniform(0.8, 1.0) * (0.35 + 0.6 * tone) * 255,
                (0.25 + 0.6 * tone) * rng.uniform(0.75, 0.95) * 255,
                (0.15 + 0.6 * tone) * rng.uniform(0.6, 0.9) * 255)
        return cls(
            skin=skin,
            hair=tuple(float(v) for v in rng.uniform(0, 255) * rng.uniform(0.2, 1.0, 3)),
            iris=tuple(float(v) for v in rng.uniform(20, 200, 3)),
            head_axes=(rng.uniform(30, 40), rng.uniform(40, 50)),
            hair_height=rng.uniform(0, 14),
            hair_sides=rng.uniform(0, 8),
            brow_thickness=rng.uniform(1.0, 3.5),
            brow_tilt=rng.uniform(-4, 4),
            eye_dx=rng.uniform(-3.5, 3.5),
            eye_dy=rng.uniform(-2.5, 2.5),
            nose_dy=rng.uniform(-3, 3),
            mouth_dx=rng.uniform(-4, 4),
            mouth_dy=rng.uniform(-3, 3),
            texture=rng.uniform(0.8, 1.15, (8, 8)),
            glasses=bool(rng.random() < 0.25),
            beard=bool(rng.random() < 0.25),
        )


@dataclass(frozen=True)
class Jitter:
    angle: float
    scale: float
    shift: tuple[float, float]
    smile: float
    mouth_open: float
    blink: float
    light_angle: float
    light_strength: float
    background: tuple[float, float, float]
    occlusion: int  # 0 none, 1 mask, 2 sunglasses, 3 block
    occluder_colour: tuple[float, float, float]
    noise: float
    blur: int
    pattern_seed: int

    @classmethod
    def draw(cls, seed: int, identity: int, image: int, *, strength: float = 1.0) -> Jitter:
        rng = np.random.default_rng([seed, identity, 1, image])
        return cls(
            angle=rng.uniform(-8, 8) * strength,
            scale=1 + rng.uniform(-0.06, 0.06) * strength,
            shift=(rng.uniform(-3, 3) * strength, rng.uniform(-3, 3) * strength),
            smile=rng.uniform(-0.3, 1.0),
            mouth_open=max(0.0, rng.uniform(-1, 1)),
            blink=float(rng.random() < 0.1 * strength),
            light_angle=rng.uniform(0, 2 * np.pi),
            light_strength=rng.uniform(0, 0.35) * strength,
            background=tuple(float(v) for v in rng.uniform(30, 230, 3)),
            occlusion=int(rng.choice(4, p=[0.85, 0.05, 0.05, 0.05])) if strength > 0 else 0,
            occluder_colour=tuple(float(v) for v in rng.uniform(0, 255, 3)),
            noise=rng.uniform(0, 6) * strength,
            blur=int(rng.choice([0, 0, 0, 3])) if strength > 0 else 0,
            pattern_seed=int(rng.integers(1 << 31)),
        )


def face_landmarks(identity: Identity) -> np.ndarray:
    """The identity's five landmarks in the (unposed) 112x112 template frame."""
    points = ARCFACE_TEMPLATE.copy()
    points[0] += (-identity.eye_dx / 2, identity.eye_dy)
    points[1] += (identity.eye_dx / 2, identity.eye_dy)
    points[2] += (0, identity.nose_dy)
    points[3] += (-identity.mouth_dx / 2, identity.mouth_dy)
    points[4] += (identity.mouth_dx / 2, identity.mouth_dy)
    return points


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * SUPER), round(y * SUPER)


def _ellipse(img: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], colour: tuple,
             angle: float = 0, start: float = 0, end: float = 360, thickness: float = -1) -> None:
    cv2.ellipse(img, _pt(*centre), _pt(max(axes[0], 0.3), max(axes[1], 0.3)), angle, start, end, colour,
                -1 if thickness < 0 else max(1, int(thickness * SUPER)), cv2.LINE_AA)


def _draw(identity: Identity, jitter: Jitter) -> np.ndarray:
    """The face in the template frame at SUPER x resolution, before pose, light and noise."""
    side = CROP_SIZE * SUPER
    img = np.empty((side, side, 3), np.uint8)
    img[:] = np.array(jitter.background, np.uint8)
    lm = face_landmarks(identity)
    cx, cy = 56.0, 66.0 + identity.nose_dy / 2
    ax, ay = identity.head_axes
    hair_axes = (ax + identity.hair_sides, ay + identity.hair_height / 2)
    _ellipse(img, (cx, cy - identity.hair_height / 2), hair_axes, identity.hair)
    head = np.zeros((side, side), np.uint8)
    _ellipse(head, (cx, cy), (ax, ay), (255,))
    texture = cv2.resize(identity.texture, (side, side), interpolation=cv2.INTER_CUBIC)
    skin = np.clip(np.array(identity.skin)[None, None, :] * texture[..., None], 0, 255).astype(np.uint8)
    img[head > 0] = skin[head > 0]
    if identity.beard:
        _ellipse(img, (cx, cy + ay * 0.45), (ax * 0.85, ay * 0.55), identity.hair, 0, 0, 180)
    for k, sign in ((0, -1), (1, 1)):
        ex, ey = lm[k]
        brow_y = ey - 8
        cv2.line(img, _pt(ex - 7, brow_y + sign * identity.brow_tilt / 2),
                 _pt(ex + 7, brow_y - sign * identity.brow_tilt / 2), identity.hair,
                 max(1, int(identity.brow_thickness * SUPER)), cv2.LINE_AA)
        open_h = 3.2 * (1 - 0.85 * jitter.blink)
        _ellipse(img, (ex, ey), (6.5, open_h), (245, 245, 245))
        if jitter.blink < 1:
            _ellipse(img, (ex, ey), (2.8, min(2.8, open_h)), identity.iris)
            _ellipse(img, (ex, ey), (1.2, min(1.2, open_h)), (10, 10, 10))
        if identity.glasses:
            _ellipse(img, (ex, ey), (9, 7), (20, 20, 20), thickness=1.2)
    if identity.glasses:
        cv2.line(img, _pt(lm[0][0] + 9, lm[0][1]), _pt(lm[1][0] - 9, lm[1][1]), (20, 20, 20),
                 max(1, int(1.2 * SUPER)), cv2.LINE_AA)
    nose_shadow = tuple(0.7 * c for c in identity.skin)
    nx, ny = lm[2]
    nose = np.array([_pt(nx, ny - 14), _pt(nx - 5, ny + 2), _pt(nx + 5, ny + 2)], np.int32)
    cv2.fillPoly(img, [nose], nose_shadow, cv2.LINE_AA)
    (mlx, mly), (mrx, mry) = lm[3], lm[4]
    mcx, mcy, half = (mlx + mrx) / 2, (mly + mry) / 2, (mrx - mlx) / 2
    lips = (150, 50, 60)
    if jitter.mouth_open > 0.3:
        _ellipse(img, (mcx, mcy + 1), (half, 2 + 5 * jitter.mouth_open), (60, 20, 25))
    curve = 2 + 5 * jitter.smile
    if curve >= 0:
        _ellipse(img, (mcx, mcy - curve / 2), (half, abs(curve)), lips, 0, 0, 180, thickness=2)
    else:
        _ellipse(img, (mcx, mcy - curve / 2), (half, abs(curve)), lips, 0, 180, 360, thickness=2)
    return img


def _occlude(img: np.ndarray, lm: np.ndarray, jitter: Jitter, rng: np.random.Generator) -> None:
    colour = jitter.occluder_colour
    if jitter.occlusion == 1:  # a mask over mouth and nose
        cv2.rectangle(img, _pt(lm[3][0] - 12, lm[2][1] - 2), _pt(lm[4][0] + 12, lm[3][1] + 16),
                      colour, -1)
    elif jitter.occlusion == 2:  # sunglasses
        cv2.rectangle(img, _pt(lm[0][0] - 10, lm[0][1] - 6), _pt(lm[1][0] + 10, lm[1][1] + 6),
                      (15, 15, 15), -1)
    elif jitter.occlusion == 3:  # something in front of the face
        x, y = rng.uniform(20, 80, 2)
        cv2.rectangle(img, _pt(x, y), _pt(x + rng.uniform(15, 35), y + rng.uniform(15, 35)), colour, -1)


def render_face(seed: int, identity: int, image: int, *,
                strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An aligned-frame 112x112 RGB face and its five landmarks (pixel coordinates).

    `strength` scales the per-image variation (0: the identity's canonical face).
    """
    ident = Identity.draw(seed, identity)
    jitter = Jitter.draw(seed, identity, image, strength=strength)
    rng = np.random.default_rng(jitter.pattern_seed)
    big = _draw(ident, jitter)
    lm = face_landmarks(ident)
    _occlude(big, lm, jitter, rng)
    theta = np.deg2rad(jitter.angle)
    c, s = jitter.scale * np.cos(theta), jitter.scale * np.sin(theta)
    centre = np.array([56.0, 60.0])
    matrix = np.array([[c, -s, 0], [s, c, 0]])
    matrix[:, 2] = centre + np.array(jitter.shift) - matrix[:, :2] @ centre
    big_matrix = matrix.copy()
    big_matrix[:, 2] *= SUPER
    posed = cv2.warpAffine(big, big_matrix, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    img = cv2.resize(posed, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float32) / CROP_SIZE - 0.5
    direction = np.cos(jitter.light_angle) * xx + np.sin(jitter.light_angle) * yy
    light = 1 + 2 * jitter.light_strength * direction
    img *= light[..., None]
    if jitter.blur:
        img = cv2.GaussianBlur(img, (jitter.blur, jitter.blur), 0)
    img += rng.normal(0, jitter.noise, img.shape).astype(np.float32)
    landmarks = lm @ matrix[:, :2].T + matrix[:, 2]
    return np.clip(img, 0, 255).astype(np.uint8), landmarks


def render_scene(seed: int, identity: int, image: int, *,
                 size: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """The face placed, larger or smaller, into a `size` x `size` picture; landmarks in that picture."""
    face, landmarks = render_face(seed, identity, image)
    rng = np.random.default_rng([seed, identity, 2, image])
    scale = rng.uniform(1.1, 1.5)
    side = int(CROP_SIZE * scale)
    x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
    scene = np.empty((size, size, 3), np.uint8)
    scene[:] = face[0, 0]
    scene[y0:y0 + side, x0:x0 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    return scene, landmarks * scale + (x0, y0)
