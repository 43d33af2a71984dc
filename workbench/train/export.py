"""Trained backbones out of a run: ONNX export and `ckpt:PATH` embedding."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from workbench.embed.models import l2_normalise
from workbench.errors import WorkbenchError
from workbench.train.backbones import build_backbone, normalise_input
from workbench.train.loop import TrainConfig


def load_backbone(checkpoint: str | Path) -> tuple[torch.nn.Module, TrainConfig]:
    """The backbone of a workbench checkpoint, in eval mode on the CPU."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = TrainConfig(**state["config"])
    except (OSError, KeyError, RuntimeError, TypeError) as exc:
        raise WorkbenchError(f"{checkpoint} is not a workbench checkpoint ({exc})") from None
    model = build_backbone(config.backbone, config.num_features, config.width, config.input_size)
    backbone = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    model.load_state_dict(backbone, strict=True)
    return model.eval(), config


class CheckpointEmbedder:
    """`ckpt:PATH`: a workbench-trained backbone as an embedding model."""

    def __init__(self, path: str):
        self.model, self.config = load_backbone(path)
        self.dim = self.config.num_features

    @torch.no_grad()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        size = self.config.input_size
        x = torch.from_numpy(np.ascontiguousarray(crops))
        if size != crops.shape[1]:
            x = torch.nn.functional.interpolate(
                normalise_input(x), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        else:
            x = normalise_input(x)
        return l2_normalise(self.model(x).numpy())


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """ONNX with a dynamic batch: input `input` (N, 3, S, S) in [-1, 1], output `embedding`."""
    model, config = load_backbone(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, config.input_size, config.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(out), opset_version=opset, input_names=["input"],
                          output_names=["embedding"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return out
