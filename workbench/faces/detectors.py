"""Choose a face detector: `dlib`, `yunet[:PATH]`, `scrfd:PATH` or `insightface:DIR`.

Every detector returns boxes and 5 landmarks in ArcFace template order, so
alignment is the same whichever found the face. A detector's key (name plus a
hash of its weights) is recorded with each face it found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from workbench import zoo
from workbench.errors import WorkbenchError
from workbench.faces.detect import Detection, model_path
from workbench.weights import file_sha256, pack_detector, weights_file

YUNET_ENV = "WB_YUNET_MODEL"
CHOICES = "dlib, yunet[:PATH], scrfd:PATH, insightface:DIR or a pack's name (buffalo_l, ...)"


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """Picklable description of a detector; worker processes build it from this."""

    kind: str  # dlib | yunet | scrfd
    path: str  # weights (dlib: its landmark model)
    threshold: float | None = None  # None: the detector's own default
    upsample: int = 0  # dlib only: search at 2**upsample size for small faces

    @classmethod
    def parse(cls, text: str, threshold: float | None = None, upsample: int = 0) -> DetectorSpec:
        kind, _, rest = text.partition(":")
        if upsample and kind != "dlib":
            raise WorkbenchError("--upsample is for dlib; YuNet and SCRFD find small faces as they are")
        if kind == "dlib" and not rest:
            return cls("dlib", str(model_path("shape_predictor_68_face_landmarks.dat")), threshold,
                       upsample)
        if kind == "yunet":
            rest = rest or os.environ.get(YUNET_ENV, "") or str(zoo.resolve("yunet"))  # shipped
            return cls("yunet", str(weights_file(rest, "YuNet model")), threshold)
        if kind == "scrfd" and rest:
            return cls("scrfd", str(weights_file(rest, "SCRFD model")), threshold)
        if kind in zoo.REGISTRY and zoo.REGISTRY[kind].task == "pack" and not rest:
            kind, rest = "insightface", str(zoo.resolve(kind))  # a named pack, here
        if kind == "insightface" and rest:
            detector = pack_detector(rest)
            if detector is None:
                raise WorkbenchError(f"no det_*.onnx detector in the InsightFace pack {rest}")
            return cls("scrfd", str(detector), threshold)
        raise WorkbenchError(f"unknown detector {text!r}: use {CHOICES}")

    @property
    def key(self) -> str:
        return f"{self.kind}-{file_sha256(self.path)[:12]}"

    def to_record(self) -> dict[str, Any]:
        """What a manifest stores: enough to rebuild this spec, and to notice changed weights."""
        return {"kind": self.kind, "path": self.path, "sha256": file_sha256(self.path),
                "threshold": self.threshold, "upsample": self.upsample, "key": self.key}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DetectorSpec:
        """The spec a record describes; a one-line error when its weights moved or changed.

        A key is never parsed as option text: only a record rebuilds a spec."""
        path = Path(record["path"])
        if record["kind"] == "dlib" and not path.is_file():  # the packaged model of another install
            path = Path(model_path("shape_predictor_68_face_landmarks.dat"))
        if not path.is_file():
            raise WorkbenchError(f"the {record['kind']} detector's weights are gone from {path}; put "
                                 f"the file (sha256 {record['sha256'][:12]}...) back there, or name "
                                 f"one with --detector")
        spec = cls(record["kind"], str(path), record.get("threshold"), int(record.get("upsample") or 0))
        if file_sha256(str(path)) != record["sha256"]:
            raise WorkbenchError(f"the {record['kind']} detector's weights at {path} changed since they "
                                 f"were recorded (sha256 {record['sha256'][:12]}...); restore them, or "
                                 f"name the new file with --detector in a new workspace")
        return spec


@lru_cache(maxsize=4)
def get_detector(spec: DetectorSpec) -> Detector:
    """One detector per process and spec: loading takes up to a second."""
    options = {} if spec.threshold is None else {"threshold": spec.threshold}
    if spec.kind == "dlib":
        from workbench.faces.detect import DlibDetector

        return DlibDetector(upsample=spec.upsample, **options)
    if spec.kind == "yunet":
        from workbench.faces.yunet import YunetDetector

        return YunetDetector(spec.path, **options)
    from workbench.faces.scrfd import ScrfdDetector

    return ScrfdDetector(spec.path, **options)
