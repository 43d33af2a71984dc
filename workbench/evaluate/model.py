"""A trained run as a scorer: embeddings (optionally flip-averaged) and softmax over class centres."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from workbench.embed.models import Flipped
from workbench.embed.trained import CheckpointEmbedder
from workbench.formats.images import decode_crops
from workbench.manifest import train_runs
from workbench.train.checkpoint import Checkpoint
from workbench.train.config import TrainConfig


@dataclass
class TrainedRun:
    run_id: str
    config: TrainConfig
    snapshot: dict
    run_dir: Path
    checkpoint: Path
    embedder: CheckpointEmbedder
    centres: np.ndarray  # (n_classes, d) unit rows: the head's class centres
    flip: bool = True  # flip-averaged embeddings (the standard evaluation protocol)

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, run_id: str) -> TrainedRun:
        run = train_runs.require(con, run_id)
        ckpt = Checkpoint.open(run.require_checkpoint())
        return cls(run_id, ckpt.config, run.snapshot, run.run_dir, ckpt.path, CheckpointEmbedder(ckpt),
                   ckpt.centres())

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Unit embeddings of (n, 112, 112, 3) crops."""
        return (Flipped(self.embedder) if self.flip else self.embedder).embed(crops)

    def embed_encoded(self, encoded: list[bytes]) -> np.ndarray:
        return self.embed(decode_crops(encoded))

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """s * cos(theta) to every class centre: what the UIR loss sees for unknown faces."""
        return self.config.scale * embeddings @ self.centres.T
