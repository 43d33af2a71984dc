"""Workbench checkpoints: the one writer and the one reader of `.pt` files.

A checkpoint holds `model` (backbone.* and head.* tensors), `optimizer`,
`scheduler`, `step`, `config` (a TrainConfig as a dict) and `num_classes`.
Files are read with `weights_only=True`: a checkpoint or `--init` file handed
over by someone else can hold tensors and plain containers, never code.
"""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import WorkbenchError, first_line
from workbench.train.backbones import build_backbone
from workbench.train.config import TrainConfig
from workbench.train.onnx_backbone import OnnxBackbone

BACKBONE = "backbone."


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash leaves the previous file, never half of a new one."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def to_cpu(value: Any) -> Any:
    """A copy of a state (tensors in dicts and lists) on the CPU: a consistent snapshot that the
    training step can go on changing while it is written."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def _link(target: Path, name: Path) -> None:
    """`name` becomes another name of `target`'s file, atomically (a copy where links fail)."""
    tmp = name.with_suffix(".link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, name)


class Checkpointer:
    """Rank 0's checkpoints of a run: `step_N.pt` written once, in a background thread (the
    training step goes on while the disk works; other ranks never wait for it), with `latest.pt`,
    `best.pt` and at the end `final.pt` as hard links to step files. Only the newest `keep` step
    files stay, plus the best: an r100 checkpoint with momentum is ~0.8 GiB, and a long run saves
    hundreds. "Best" is the lowest mean training loss of the interval before a save (no held-out
    data is read while training)."""

    def __init__(self, folder: Path, keep: int, latest: str, final: str, best: str):
        self.folder, self.keep = folder, max(1, keep)
        self.latest, self.final, self.best = latest, final, best
        self.best_loss = math.inf
        self.best_step: int | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future[None] | None = None

    def step_path(self, step: int) -> Path:
        return self.folder / f"step_{step:07d}.pt"

    def save(self, state: dict[str, Any], step: int, loss: float | None = None, final: bool = False) -> None:
        """Snapshot `state` now (on the CPU) and write it in the background; `final` also waits."""
        self.wait()
        snapshot = to_cpu(state)
        is_best = loss is not None and math.isfinite(loss) and loss < self.best_loss
        if is_best:
            self.best_loss, self.best_step = loss, step
        self.pending = self.pool.submit(self._write, snapshot, step, is_best, final)
        if final:
            self.wait()

    def _write(self, snapshot: dict[str, Any], step: int, is_best: bool, final: bool) -> None:
        path = self.step_path(step)
        save(snapshot, path)
        _link(path, self.folder / self.latest)
        if is_best:
            _link(path, self.folder / self.best)
        if final:
            _link(path, self.folder / self.final)
        steps = sorted(self.folder.glob("step_*.pt"))
        for old in steps[: -self.keep]:
            if self.best_step is None or old != self.step_path(self.best_step):
                old.unlink(missing_ok=True)

    def wait(self) -> None:
        """Until the last save is on disk (its error, if any, raised here)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        self.pool.shutdown()


def read(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's state; `mmap`: tensors are read from the file when used (inference reads the
    model and never the optimizer's momentum, as large again)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise WorkbenchError(f"{path} is not a readable PyTorch checkpoint ({first_line(exc)})") from None
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
        """For inference: the model's tensors (memory-mapped), without optimizer or scheduler."""
        state = read(path, mmap=True)
        for key in ("optimizer", "scheduler"):
            state.pop(key, None)
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
