"""Synthetic web copies of an aligned face crop, for calibrating duplicate detection.

A photo copied around the web is re-encoded, rescaled, cropped or given
borders, brightened, colour-shifted, mirrored or captioned, then detected and
aligned again (a few pixels of jitter). `web_copy` applies a random handful of
those edits to an aligned 112x112 RGB crop and returns the re-aligned crop.
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 112


def _jitter(rgb: np.ndarray, rng: np.random.Generator, crop: bool) -> np.ndarray:
    """Re-alignment error, plus a crop (zoom in) or a border (zoom out) when asked."""
    scale = rng.uniform(1.03, 1.10) if crop else rng.uniform(0.97, 1.03)
    angle = rng.uniform(-3, 3)
    matrix = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-2.5, 2.5, size=2)
    return cv2.warpAffine(rgb, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _rescale(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(40, 90))
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def _tone(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.8, 1.2)
    bias = rng.uniform(-20, 20)
    colour = rng.uniform(0.92, 1.08, size=3)
    out = rgb.astype(np.float32) * gain * colour + bias
    return np.clip(out, 0, 255).astype(np.uint8)


def _caption(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = rgb.copy()
    y = int(rng.integers(95, 110))
    text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), size=6))
    cv2.putText(out, text, (int(rng.integers(2, 30)), y), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _jpeg(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    _, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 80))])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def web_copy(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One synthetic copy: always re-encoded and re-aligned, plus random other edits."""
    out = _jitter(rgb, rng, crop=bool(rng.random() < 0.3))
    if rng.random() < 0.5:
        out = _rescale(out, rng)
    if rng.random() < 0.6:
        out = _tone(out, rng)
    if rng.random() < 0.15:
        out = out[:, ::-1].copy()
    if rng.random() < 0.15:
        out = _caption(out, rng)
    return _jpeg(out, rng)
