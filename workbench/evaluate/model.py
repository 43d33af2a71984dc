"""A trained run as a scorer: embeddings (optionally flip-averaged) and softmax over class centres."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from workbench.embed.compute import decode_crops
from workbench.embed.models import l2_normalise
from workbench.errors import WorkbenchError
from workbench.manifest.query import one
from workbench.train.backbones import build_backbone, normalise_input
from workbench.train.loop import TrainConfig

BATCH = 128


@dataclass
class TrainedRun:
    run_id: str
    config: TrainConfig
    snapshot: dict
    checkpoint: Path
    backbone: torch.nn.Module
    centres: np.ndarray  # (n_classes, d) unit rows: the head's class centres
    scale: float

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection, run_id: str) -> TrainedRun:
        row = one(con, "SELECT config, data_snapshot, artifacts_dir FROM train_runs WHERE run_id = ?",
                  [run_id])
        if row is None:
            raise WorkbenchError(f"no training run {run_id!r}; see `wb status` or wb_train_runs")
        ckpt_dir = Path(row[2]) / "checkpoints"
        checkpoint = next((p for p in (ckpt_dir / "final.pt", ckpt_dir / "latest.pt") if p.exists()), None)
        if checkpoint is None:
            raise WorkbenchError(f"run {run_id} has no checkpoint yet")
        config = TrainConfig(**json.loads(row[0]))
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
        backbone = build_backbone(config.backbone, config.num_features, config.width, config.input_size)
        backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
        centres = l2_normalise(state["head.weight"].float().numpy())
        return cls(run_id, config, json.loads(row[1]), checkpoint, backbone.eval(), centres,
                   config.scale)

    @torch.no_grad()
    def embed(self, crops: np.ndarray, flip: bool = True) -> np.ndarray:
        """Unit embeddings of (n, 112, 112, 3) crops, flip-averaged by default."""
        out = []
        size = self.config.input_size
        for start in range(0, len(crops), BATCH):
            x = normalise_input(torch.from_numpy(np.ascontiguousarray(crops[start : start + BATCH])))
            if size != x.shape[-1]:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                                    antialias=True, align_corners=False)
            e = self.backbone(x)
            if flip:
                e = torch.nn.functional.normalize(e) + torch.nn.functional.normalize(
                    self.backbone(torch.flip(x, dims=[3])))
            out.append(e.numpy())
        return l2_normalise(np.concatenate(out)) if out else np.empty((0, self.config.num_features),
                                                                         np.float32)

    def embed_encoded(self, encoded: list[bytes], flip: bool = True) -> np.ndarray:
        return self.embed(decode_crops(encoded), flip)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """s * cos(theta) to every class centre: what the UIR loss sees for unknown faces."""
        return self.scale * embeddings @ self.centres.T
