"""SCRFD (InsightFace) face detection through onnxruntime, decoded without InsightFace.

The exported models have 9 outputs: per stride (8, 16, 32) the face scores
(already sigmoid), box distances and 5-point keypoint offsets, `anchors`
anchors per feature-map cell. Both are in units of the stride, measured from
the cell's top-left corner (x * stride, y * stride). Images are letterboxed
into the model's input (scaled to fit, top-left, zero padding), so boxes map
back by one scale factor; small images are not enlarged (a face filling a
150 px crop, enlarged to 640, is larger than the largest anchors).
"""

from __future__ import annotations

import cv2
import numpy as np

from workbench.errors import WorkbenchError
from workbench.faces.detect import Detection, nms, primary_first
from workbench.faces.onnx_session import onnx_session

STRIDES = (8, 16, 32)
DEFAULT_SIZE = 640


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(h*w*anchors, 2) top-left corners of the cells, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, anchors, axis=0)


def decode(outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (n,), boxes (n, 4) x1y1x2y2, keypoints (n, 5, 2)) above `threshold`, in input pixels.

    Outputs are grouped by their last dimension (1 scores, 4 boxes, 10 keypoints)
    and ordered by stride from their row counts, so any output order works.
    """
    groups: dict[int, list[np.ndarray]] = {1: [], 4: [], 10: []}
    for out in outputs:
        arr = out.reshape(-1, out.shape[-1])
        if arr.shape[1] not in groups:
            raise WorkbenchError(f"not an SCRFD model: unexpected output width {arr.shape[1]}")
        groups[arr.shape[1]].append(arr)
    if any(len(g) != len(STRIDES) for g in groups.values()):
        raise WorkbenchError("not an SCRFD model with keypoints: need 9 outputs (3 strides x "
                             "scores, boxes, keypoints)")
    for g in groups.values():
        g.sort(key=len, reverse=True)
    height, width = input_hw
    all_scores, all_boxes, all_kps = [], [], []
    for i, stride in enumerate(STRIDES):
        scores, dist, kps = groups[1][i][:, 0], groups[4][i], groups[10][i]
        cells = (height // stride) * (width // stride)
        anchors = len(scores) // cells
        if anchors * cells != len(scores) or len(dist) != len(scores) or len(kps) != len(scores):
            raise WorkbenchError(f"SCRFD outputs do not match a {width}x{height} input at stride {stride}")
        keep = scores >= threshold
        if not keep.any():
            continue
        centres = anchor_centres(height, width, stride, anchors)[keep]
        d = dist[keep] * stride
        all_scores.append(scores[keep])
        all_boxes.append(np.concatenate([centres - d[:, :2], centres + d[:, 2:]], axis=1))
        all_kps.append(centres[:, None, :] + kps[keep].reshape(-1, 5, 2) * stride)
    if not all_scores:
        return np.empty(0, np.float32), np.empty((0, 4), np.float32), np.empty((0, 5, 2), np.float32)
    return np.concatenate(all_scores), np.concatenate(all_boxes), np.concatenate(all_kps)


class ScrfdDetector:
    """SCRFD with keypoints; the model's landmarks are already in ArcFace template order."""

    def __init__(self, path: str, threshold: float = 0.5, nms_iou: float = 0.4) -> None:
        self.threshold, self.nms_iou = threshold, nms_iou
        self._session = onnx_session(path)
        inputs = self._session.get_inputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3:
            raise WorkbenchError(f"{path}: not a detector with one Nx3xHxW input")
        self._input = inputs[0].name
        fixed = all(isinstance(s, int) for s in shape[2:])
        self.input_hw = (shape[2], shape[3]) if fixed else (DEFAULT_SIZE, DEFAULT_SIZE)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        height, width = rgb.shape[:2]
        in_h, in_w = self.input_hw
        # Never enlarge: tightly cropped faces blown up past the largest anchors are missed.
        scale = min(1.0, in_h / height, in_w / width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.zeros((in_h, in_w, 3), np.float32)
        canvas[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self._session.run(None, {self._input: blob})
        scores, boxes, kps = decode(outputs, self.input_hw, self.threshold)
        keep = nms(scores, boxes, self.nms_iou)
        return primary_first([
            Detection(boxes[i].astype(np.float64) / scale, float(scores[i]),
                      kps[i].astype(np.float64) / scale)
            for i in keep
        ])
