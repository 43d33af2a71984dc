"""Face quality from size, sharpness and exposure.

Heuristic and documented: each factor maps to [0, 1] and the quality is their
product, so a face that fails any one of them scores low.
- size: inter-ocular distance in the original image, full marks at 32 px
  (below ~10 px recognition is unreliable); unknown for pre-aligned input.
- sharpness: variance of the Laplacian of the aligned crop, v / (v + 50).
- exposure: mean brightness b of the crop in [0, 1], 1 - ((b - 0.5) / 0.5)^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FULL_SIZE_IOD = 32.0
MIN_IOD = 8.0
BLUR_HALF = 50.0
MIN_QUALITY = 0.2  # below it a face is excluded from training and listed as low-quality


@dataclass(frozen=True)
class Quality:
    face_size: float | None
    blur: float
    brightness: float
    score: float


def size_score(iod: float | None) -> float:
    if iod is None:
        return 1.0
    return float(np.clip((iod - MIN_IOD) / (FULL_SIZE_IOD - MIN_IOD), 0.0, 1.0))


def sharpness_score(laplacian_var: float) -> float:
    return laplacian_var / (laplacian_var + BLUR_HALF)


def exposure_score(brightness: float) -> float:
    return float(np.clip(1.0 - ((brightness - 0.5) / 0.5) ** 2, 0.0, 1.0))


def face_quality(crop: np.ndarray, landmarks: np.ndarray | None) -> Quality:
    """Quality of an aligned crop (RGB or gray); `landmarks` are in the original image.

    `landmarks` is None for pre-aligned input, whose original face size is unknown.
    """
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop
    _, std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))
    blur = float(std[0, 0] ** 2)
    brightness = float(cv2.mean(gray)[0] / 255.0)
    iod = None if landmarks is None else float(np.linalg.norm(landmarks[1] - landmarks[0]))
    score = size_score(iod) * sharpness_score(blur) * exposure_score(brightness)
    return Quality(face_size=iod, blur=blur, brightness=brightness, score=score)
