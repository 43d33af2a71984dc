"""Workbench checkpoints: the one writer and the one reader of `.pt` files.

A checkpoint holds `model` (backbone.* and head.* tensors), `optimizer`,
`scheduler`, `step`, `config` (a TrainConfig as a dict) and `num_classes`.
Files are read with `weights_only=True`: a checkpoint or `--init` file handed
over by someone else can hold tensors and plain containers, never code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.train.backbones import build_backbone
from workbench.train.config import TrainConfig
from workbench.train.onnx_backbone import OnnxBackbone

BACKBONE = "backbone."


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash leaves the previous file, never half of a new one."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise WorkbenchError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    return state


def config_of(state: dict[str, Any], path: str | Path) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    stored = state.get("config")
    if not isinstance(stored, dict) or "model" not in state:
        raise WorkbenchError(f"{path} is not a workbench checkpoint (no config and model)")
    return TrainConfig(**{k: v for k, v in stored.items() if k in known})


def backbone_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a workbench checkpoint, or an arcface_torch `model.pt` as is."""
    model = state.get("model")
    if isinstance(model, dict):
        return {k[len(BACKBONE):]: v for k, v in model.items() if k.startswith(BACKBONE)}
    return state


def load_into(backbone: nn.Module, path: str | Path) -> None:
    """Fill `backbone` from a workbench checkpoint or an arcface_torch backbone file (`--init`)."""
    try:
        backbone.load_state_dict(backbone_weights(read(path)), strict=True)
    except RuntimeError as exc:
        raise WorkbenchError(f"--init {path} does not fit the backbone: {str(exc).splitlines()[0]}") from None


@dataclass
class Checkpoint:
    """A workbench checkpoint read once: its recipe, backbone and class centres."""

    path: Path
    state: dict[str, Any]
    config: TrainConfig

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        state = read(path)
        return cls(Path(path), state, config_of(state, path))

    def backbone(self) -> nn.Module:
        """The trained backbone, in eval mode on the CPU."""
        c = self.config
        if c.backbone == "onnx":
            graph = self.state.get("onnx_graph")
            if not isinstance(graph, torch.Tensor):
                raise WorkbenchError(f"{self.path}: an onnx-backbone checkpoint without its graph")
            model: nn.Module = OnnxBackbone.from_skeleton(graph.numpy().tobytes(), tuple(c.onnx_norm or ()))
        else:
            model = build_backbone(c.backbone, c.num_features, c.width, c.input_size)
        model.load_state_dict(backbone_weights(self.state), strict=True)
        return model.eval()

    def centres(self) -> np.ndarray:
        """The margin head's class centres as unit rows (n_classes, d)."""
        weight = self.state["model"]["head.weight"].float()
        return torch.nn.functional.normalize(weight, dim=1).numpy()
