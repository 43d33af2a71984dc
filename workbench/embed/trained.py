"""`ckpt:PATH`: a backbone trained by `wb train` as an embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workbench.embed.unit import l2_normalise
from workbench.train.backbones import normalise_input
from workbench.train.checkpoint import Checkpoint

BATCH = 128


class CheckpointEmbedder:
    def __init__(self, checkpoint: str | Path | Checkpoint):
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
        # A GPU where there is one (a Ray task given one sees exactly that one), else the CPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.config = ckpt.backbone().to(self.device), ckpt.config
        self.dim = self.config.num_features

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Unit embeddings of (n, 112, 112, 3) RGB crops."""
        return l2_normalise(self.features(crops))

    @torch.no_grad()
    def features(self, crops: np.ndarray) -> np.ndarray:
        """The backbone's features before normalisation (their norm is a rejection score of its
        own: Objectosphere trains it), of RGB crops resized to the run's input size."""
        size = self.config.input_size
        out = [np.empty((0, self.dim), np.float32)]
        for start in range(0, len(crops), BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + BATCH])).to(self.device)
            x = normalise_input(batch)
            if size != x.shape[-1]:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                    align_corners=False)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)
