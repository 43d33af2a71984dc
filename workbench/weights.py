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


@lru_cache(maxsize=32)
def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def insightface_pack(folder: str) -> tuple[Path | None, Path | None]:
    """(detector, recogniser) of an InsightFace model-pack folder such as buffalo_l.

    The detector is the `det_*.onnx` file; the recogniser is the model whose one
    input is Nx3x112x112 (packs also hold landmark and attribute models).
    """
    import onnx

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise WorkbenchError(f"InsightFace model pack not found: {root}")
    detector = next(iter(sorted(root.glob("det_*.onnx"))), None)
    recogniser = None
    for path in sorted(root.glob("*.onnx")):
        if path == detector:
            continue
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:
            continue
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
        if dims[1:] == [3, 112, 112]:
            recogniser = path
            break
    return detector, recogniser
