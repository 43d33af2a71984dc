"""One way to open an ONNX model: CUDA when onnxruntime has it, all CPU cores otherwise."""

from __future__ import annotations

import os

from workbench.errors import WorkbenchError

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def onnx_session(path: str):  # -> onnxruntime.InferenceSession
    """A session for `path`; a file that is not a loadable ONNX model is a one-line error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    available = set(ort.get_available_providers())
    providers = [p for p in PREFERRED_PROVIDERS if p in available]
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"cannot load ONNX model {path}: {first}") from None
