"""A trained run as a scorer: embeddings (optionally flip-averaged) and softmax over class centres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.embed.models import mirror_mean, with_mirrors
from workbench.embed.trained import CheckpointEmbedder
from workbench.embed.unit import l2_normalise
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
        return self.embed_with_norms(crops)[0]

    def embed_with_norms(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit embeddings of crops (the mean of the crop's and its mirror's unit features when
        flipping) and the feature norm before normalisation (averaged the same way)."""
        raw = self.embedder.features(with_mirrors(crops) if self.flip else crops)
        norms, unit = np.linalg.norm(raw, axis=1), l2_normalise(raw)
        if self.flip:
            return mirror_mean(unit), norms.reshape(2, -1).mean(axis=0)
        return unit, norms

    def embed_encoded(self, encoded: Sequence[bytes]) -> np.ndarray:
        """Unit embeddings of encoded crops, decoded a batch at a time."""
        return self.embed_encoded_with_norms(encoded)[0]

    def embed_encoded_with_norms(self, encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """`embed_with_norms` of encoded crops, decoded a batch at a time (490k eval faces decoded
        at once would be 18 GB of pixels, twice with flips)."""
        out = np.empty((len(encoded), self.config.num_features), np.float32)
        norms = np.empty(len(encoded), np.float32)
        for start in range(0, len(encoded), DECODE_BATCH):
            part = encoded[start : start + DECODE_BATCH]
            out[start : start + len(part)], norms[start : start + len(part)] = \
                self.embed_with_norms(decode_crops(list(part)))
        return out, norms

    def embed_files_with_norms(self, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Unit embeddings and feature norms of crop files, read a batch at a time."""
        return self.embed_encoded_with_norms(_LazyFiles(paths))

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
