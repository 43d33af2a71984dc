"""One way to open an ONNX model (CUDA when onnxruntime has it, all CPU cores otherwise), and one
way to tell the input scaling a recognition model expects."""

from __future__ import annotations

import os
from typing import Any

from workbench.errors import WorkbenchError, first_line

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
DEFAULT_NORM = (127.5, 127.5)  # InsightFace's (x - 127.5) / 127.5


def onnx_session(path: str, *, model: bytes | None = None, threads: int | None = None,
                 cpu: bool = False):  # -> onnxruntime.InferenceSession
    """A session for `path` (or for `model`, its bytes edited in memory); a file that is not a
    loadable ONNX model is a one-line error. `threads`: intra-op threads (all cores unless
    given); `cpu`: never CUDA, for small models run once per image at changing sizes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    available = set(ort.get_available_providers())
    providers = ["CPUExecutionProvider"] if cpu else [p for p in PREFERRED_PROVIDERS if p in available]
    try:
        return ort.InferenceSession(path if model is None else model, options, providers=providers)
    except Exception as exc:
        raise WorkbenchError(f"cannot load ONNX model {path}: {first_line(exc)}") from None


def recogniser_norm(model: Any) -> tuple[float, float]:  # model: onnx.ModelProto
    """(mean, std) of `(x - mean) / std` on 0..255 pixels: the model's metadata (`input_mean`,
    `input_std`), else raw pixels when the graph normalises its input itself (Sub and Mul among
    its first nodes, as InsightFace's MXNet exports do), else InsightFace's (127.5, 127.5)."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "input_mean" in meta and "input_std" in meta:
        try:
            mean, std = float(meta["input_mean"]), float(meta["input_std"])
        except ValueError:
            mean, std = 0.0, 0.0
        if std <= 0:
            raise WorkbenchError(f"the model's input_mean/input_std metadata ({meta['input_mean']!r}, "
                                 f"{meta['input_std']!r}) is not a usable scaling; give --model-norm")
        return mean, std
    first = {node.op_type for node in model.graph.node[:8]}
    return (0.0, 1.0) if {"Sub", "Mul"} <= first else DEFAULT_NORM
