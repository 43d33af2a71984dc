"""A training recipe: every choice `wb train` makes, stored with the run and in its checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.train.losses import LOSSES

# (field, lowest, highest): the same ranges the CLI declares on its options, for Python callers
NUMERIC = (("uir_weight", 0, 1000), ("unlabeled_ratio", 0, 0.95), ("width", 0.0625, 4),
           ("input_size", 16, 1024), ("num_features", 2, 8192), ("steps", 1, 1e8), ("epochs", 1e-3, 1e4),
           ("batch_size", 1, 65536), ("lr", 1e-8, 1e12), ("warmup_steps", 0, 1e8),
           ("freeze_backbone_steps", 0, 1e8), ("backbone_lr_mult", 0, 100), ("num_workers", 0, 256),
           ("checkpoint_every", 1, 1e8), ("keep_checkpoints", 1, 1e6), ("log_every", 1, 1e8),
           ("seed", 0, 2**32 - 1))
ACTIVATION_BYTES = {"r18": 30e6, "r34": 45e6, "r50": 80e6, "r100": 140e6, "mbf": 25e6, "onnx": 40e6}


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
    num_workers: int | None = None  # DataLoader workers per process; None: from the CPU count
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # step files kept besides the best
    log_every: int = 10
    flip: bool = True
    holdout_per_identity: int = 1  # labeled faces kept out of training as known probes for `wb eval`
    holdout_min_samples: int = 4  # only identities with at least this many faces give one up

    @property
    def onnx_path(self) -> str:
        return (self.init or "").removeprefix("onnx:")

    def validate(self) -> None:
        if self.uir_loss not in LOSSES:
            raise WorkbenchError(f"--uir-loss / --open-set-loss must be one of {', '.join(LOSSES)}")
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
        for name, low, high in NUMERIC:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise WorkbenchError(f"--{name.replace('_', '-')} must be between {low:g} and {high:g} "
                                     f"(got {value})")

    def memory_needed(self, num_classes: int) -> int:
        """A rough upper estimate of the bytes one process needs for a training step: activations
        of the batch (kept for backward) plus the margin head's weights, gradients and momentum.
        Measured on CPU at 112 px, width 1 (r50: ~80 MB per image); scaled by width and pixels."""
        per_image = ACTIVATION_BYTES.get(self.backbone, ACTIVATION_BYTES["r50"]) * self.width * \
            (self.input_size / 112) ** 2
        if self.amp == "bf16":
            per_image /= 2
        head = 3 * 4 * num_classes * self.num_features
        return int(self.batch_size * per_image + head)

    def check_memory(self, num_classes: int, available: int) -> None:
        """Refuse a recipe that cannot fit in `available` bytes, before anything is allocated."""
        needed = self.memory_needed(num_classes)
        if needed > available:
            raise WorkbenchError(f"this recipe needs about {needed / 2**30:.1f} GiB per process for "
                                 f"--batch-size {self.batch_size} and {num_classes} classes, and "
                                 f"{available / 2**30:.1f} GiB are free: lower --batch-size, "
                                 "--input-size or --width")
