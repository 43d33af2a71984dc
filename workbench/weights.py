"""Model weight files the user gives: found or refused in one line, fingerprinted by content.

Detectors and embedding models are keyed by name plus a hash of their weights,
so results from different weights are never mixed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from workbench.errors import WorkbenchError


def weights_file(text: str, what: str = "model") -> Path:
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise WorkbenchError(f"{what} file not found: {path}")
    return path


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, read now (for files that may change: downloads, imported vectors)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=32)
def file_sha256(path: str) -> str:
    """A model file's SHA-256, once per process (model keys are asked for often)."""
    return sha256_of(path)


def _pack(folder: str) -> Path:
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise WorkbenchError(f"InsightFace model pack not found: {root}")
    return root


def pack_detector(folder: str) -> Path | None:
    """The detector of an InsightFace model-pack folder such as buffalo_l: its `det_*.onnx`."""
    return next(iter(sorted(_pack(folder).glob("det_*.onnx"))), None)


def pack_recogniser(folder: str) -> Path | None:
    """The recogniser of a model pack: the model whose one input is Nx3x112x112 (packs also
    hold detection, landmark and attribute models)."""
    import onnx

    for path in sorted(_pack(folder).glob("*.onnx")):
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:
            continue
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
        if dims[1:] == [3, 112, 112]:
            return path
    return None
