"""What every detector returns, and dlib's HOG detector with its 68-point shape predictor.

dlib's models come from the PyPI packages `dlib-bin` and `face_recognition_models`;
nothing is downloaded. The 68 points are reduced to the 5 points of the ArcFace
template: eye centres, nose tip and mouth corners. YuNet and SCRFD live beside
this module; `detectors.py` picks one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from workbench.errors import WorkbenchError
from workbench.faces.align import align_face


@dataclass(frozen=True)
class Detection:
    bbox: np.ndarray  # x1, y1, x2, y2 in original pixels
    score: float
    landmarks: np.ndarray  # (5, 2) in original pixels, ArcFace order


def model_path(name: str) -> Path:
    """Path of a model file shipped by `face_recognition_models`.

    Found through the import system without importing the package, whose
    `__init__` needs `pkg_resources` (absent from current setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError("face_recognition_models is not installed: pip install the project")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.exists():
        raise WorkbenchError(f"dlib model file missing: {path}")
    return path


def primary_first(found: list[Detection]) -> list[Detection]:
    """Faces sorted primary first: largest box, then highest score."""
    return sorted(found, key=lambda d: (-(d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]), -d.score))


def nms(scores: np.ndarray, boxes: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first (OpenCV's)."""
    if len(scores) == 0:
        return np.empty(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, iou)
    return np.asarray(kept, np.int64).reshape(-1)


def nearest_centre(found: list[Detection], height: int, width: int) -> Detection | None:
    """The detection whose box centre is nearest the image centre: the subject of a portrait
    or of a protocol's photo (LFW's are centred on the person named)."""
    if not found:
        return None
    centre = np.array([width / 2, height / 2])
    return min(found, key=lambda d: float(np.hypot(*((d.bbox[:2] + d.bbox[2:]) / 2 - centre))))


def aligned_centre_face(rgb: np.ndarray, detect: Callable[[np.ndarray], list[Detection]]
                        ) -> np.ndarray | None:
    """The 112x112 aligned crop of the photo's centre face; None when the detector finds nobody."""
    face = nearest_centre(detect(rgb), *rgb.shape[:2])
    return None if face is None else align_face(rgb, face.landmarks)


def landmarks68_to_5(points: np.ndarray) -> np.ndarray:
    """Eye centres (mean of each eye's 6 points), nose tip (30), mouth corners (48, 54)."""
    return np.stack(
        [points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]]
    )


class DlibDetector:
    """dlib HOG detector; large images are searched at reduced size, landmarks at full size."""

    def __init__(self, threshold: float = 0.0, upsample: int = 0, max_side: int = 1280) -> None:
        import dlib

        self.threshold = threshold
        self.upsample = upsample
        self.max_side = max_side
        self._detector = dlib.get_frontal_face_detector()
        landmarks_model = model_path("shape_predictor_68_face_landmarks.dat")
        self._predictor = dlib.shape_predictor(str(landmarks_model))
        self._rect = dlib.rectangle

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces sorted primary first (largest box, then highest score)."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        rects, scores, _ = self._detector.run(small, self.upsample, self.threshold)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], float) / scale
            full = self._rect(*(round(v) for v in box))
            shape = self._predictor(rgb, full)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            found.append(Detection(box, float(score), landmarks68_to_5(points)))
        return primary_first(found)
