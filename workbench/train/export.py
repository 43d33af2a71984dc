"""A trained backbone out of a run as ONNX, readable by `--model onnx:PATH`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from workbench.manifest import train_runs
from workbench.manifest.workspace import Workspace
from workbench.results import Result
from workbench.train.checkpoint import Checkpoint
from workbench.train.onnx_backbone import OnnxBackbone


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """ONNX with a dynamic batch. A backbone fine-tuned from `--init onnx:` is its source graph with
    the trained weights (input scaling as the source's, in the metadata); a workbench backbone
    takes `input` (N, 3, S, S) in [-1, 1] and gives `embedding`."""
    ckpt = Checkpoint.open(checkpoint)
    model, size = ckpt.backbone(), ckpt.config.input_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, OnnxBackbone):
        onnx.save(model.to_onnx(), str(out))
        return out
    dummy = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(out), opset_version=opset, input_names=["input"],
                          output_names=["embedding"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return out


@dataclass
class ModelExport(Result):
    run_id: str
    onnx: str
    checkpoint: str


def export_run(workspace: Workspace, run_id: str, out: Path | None = None) -> ModelExport:
    """`wb export-model`: the run's final (else latest) checkpoint as ONNX, by default
    `runs/RUN/model.onnx`."""
    with workspace.connect(read_only=True) as con:
        run = train_runs.require(con, run_id)
    checkpoint = run.require_checkpoint()
    path = export_onnx(checkpoint, out or run.run_dir / "model.onnx")
    return ModelExport(run_id, str(path), str(checkpoint))
