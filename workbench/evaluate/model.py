"""A trained run as a scorer: embeddings (optionally flip-averaged) and softmax over class centres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.embed.models import Flipped
from workbench.embed.trained import CheckpointEmbedder
from workbench.evaluate.metrics import OpenSetScores, open_set_scores
from workbench.formats.images import decode_crops
from workbench.manifest import train_runs
from workbench.train.checkpoint import Checkpoint
from workbench.train.config import TrainConfig

DECODE_BATCH = 256


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

    def embed_encoded(self, encoded: Sequence[bytes]) -> np.ndarray:
        """Unit embeddings of encoded crops, decoded a batch at a time (490k eval faces decoded at
        once would be 18 GB of pixels, twice with flips)."""
        out = np.empty((len(encoded), self.config.num_features), np.float32)
        for start in range(0, len(encoded), DECODE_BATCH):
            part = encoded[start : start + DECODE_BATCH]
            out[start : start + len(part)] = self.embed(decode_crops(list(part)))
        return out

    def embed_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Unit embeddings of crop files, read a batch at a time."""
        return self.embed_encoded(_LazyFiles(paths))

    def scores(self, embeddings: np.ndarray) -> OpenSetScores:
        """Max softmax probability, argmax, entropy and max cosine of each face against every class
        centre, in row chunks (see `metrics.open_set_scores`)."""
        return open_set_scores(embeddings, self.centres, self.config.scale)


class _LazyFiles(Sequence[bytes]):
    """File contents read when sliced, so a long list of crops is never held in memory whole."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [Path(p).read_bytes() for p in self.paths[index]]
        return Path(self.paths[index]).read_bytes()
