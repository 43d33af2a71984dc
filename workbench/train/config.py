"""A training recipe: every choice `wb train` makes, stored with the run and in its checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.train.losses import UIR_LOSSES


@dataclass
class TrainConfig:
    labeled: str | None = None
    unlabeled_split: str = "train_unlabeled"
    uir_loss: str = "none"
    uir_weight: float = 0.1
    unlabeled_ratio: float = 0.25
    backbone: str = "r50"
    width: float = 1.0
    input_size: int = 112
    num_features: int = 512
    head: str = "arcface"
    scale: float = 64.0
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int | None = None
    grad_clip: float = 5.0
    init: str | None = None  # a checkpoint, an arcface_torch backbone file, or onnx:PATH
    onnx_norm: list[float] | None = None  # (mean, std) of an onnx: backbone's input, from the model
    freeze_backbone_steps: int = 0  # head warm-up: the backbone neither learns nor moves its BN statistics
    backbone_lr_mult: float = 1.0  # backbone learning rate = lr x this (fine-tuning: e.g. 0.1)
    freeze_bn: bool = False  # keep BatchNorm running statistics as they are
    device: str = "cpu"
    amp: str = "none"
    num_workers: int = 2
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    flip: bool = True
    holdout_per_identity: int = 1  # labeled faces kept out of training as known probes for `wb eval`
    holdout_min_samples: int = 4  # only identities with at least this many faces give one up

    @property
    def onnx_path(self) -> str:
        return (self.init or "").removeprefix("onnx:")

    def validate(self) -> None:
        if self.uir_loss not in UIR_LOSSES:
            raise WorkbenchError(f"--uir-loss must be one of {', '.join(UIR_LOSSES)}")
        if self.amp not in ("none", "bf16"):
            raise WorkbenchError("--amp must be none or bf16")
        if not 0 <= self.unlabeled_ratio < 1:
            raise WorkbenchError("--unlabeled-ratio must be in [0, 1)")
        if self.freeze_backbone_steps < 0 or self.backbone_lr_mult < 0:
            raise WorkbenchError("--freeze-backbone-steps and --backbone-lr-mult must not be negative")
        if (self.backbone == "onnx") != bool(self.init and self.init.startswith("onnx:")):
            raise WorkbenchError("an onnx backbone comes from --init onnx:PATH (and only from it)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise WorkbenchError("--device cuda asked for, but torch sees no CUDA device")
