"""The `train_runs` table: one row per training run (recipe, data snapshot, outcome, folder).

The one module that reads and writes the table, and the one that knows a run
folder's checkpoint layout (`checkpoints/final.pt`, `checkpoints/latest.pt`),
so "the checkpoint of a run" means the same file everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from workbench.errors import WorkbenchError

FINAL = "final.pt"
LATEST = "latest.pt"
BEST = "best.pt"  # the lowest logged training loss among saves (links to step files)


def run_folder(root: Path, run_id: str) -> Path:
    """Where a training run keeps its files (`config.json`, checkpoints, metrics)."""
    return root / "runs" / run_id


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


_COLUMNS = ("run_id, status, config, data_snapshot, versions, step, metrics, artifacts_dir, "
            "created_at, updated_at")


@dataclass(frozen=True)
class TrainRun:
    run_id: str
    status: str  # training | done | failed | interrupted
    config: dict[str, Any]
    snapshot: dict[str, Any]  # what data it trained on (set, digests, counts, held-out probes)
    versions: dict[str, Any]
    step: int | None
    metrics: dict[str, Any]
    run_dir: Path
    created_at: datetime
    updated_at: datetime

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.run_dir)

    def checkpoint(self) -> Path | None:
        """The final checkpoint, else the latest one (an interrupted run), else None."""
        return next((p for p in (self.checkpoint_dir / FINAL, self.checkpoint_dir / LATEST) if p.exists()),
                    None)

    def require_checkpoint(self) -> Path:
        path = self.checkpoint()
        if path is None:
            raise WorkbenchError(f"run {self.run_id} has no checkpoint yet")
        return path


def _row(values: tuple) -> TrainRun:
    run_id, status, config, snapshot, versions, step, metrics, run_dir, created, updated = values
    return TrainRun(run_id, status, json.loads(config or "{}"), json.loads(snapshot or "{}"),
                    json.loads(versions or "{}"), step, json.loads(metrics or "{}"), Path(run_dir),
                    created, updated)


def get(con: duckdb.DuckDBPyConnection, run_id: str) -> TrainRun | None:
    rows = con.execute(f"SELECT {_COLUMNS} FROM train_runs WHERE run_id = ?", [run_id]).fetchall()
    return _row(rows[0]) if rows else None


def require(con: duckdb.DuckDBPyConnection, run_id: str) -> TrainRun:
    run = get(con, run_id)
    if run is None:
        raise WorkbenchError(f"no training run {run_id!r}; see `wb status` or wb_train_runs")
    return run


def newest_first(con: duckdb.DuckDBPyConnection) -> list[TrainRun]:
    return [_row(r) for r in con.execute(
        f"SELECT {_COLUMNS} FROM train_runs ORDER BY created_at DESC").fetchall()]


def insert(con: duckdb.DuckDBPyConnection, run_id: str, config: dict[str, Any], snapshot: dict[str, Any],
           versions: dict[str, Any], run_dir: Path) -> None:
    con.execute(
        "INSERT INTO train_runs (run_id, status, config, data_snapshot, versions, step, metrics, "
        "artifacts_dir, created_at, updated_at) VALUES (?, 'training', ?, ?, ?, 0, NULL, ?, now(), now())",
        [run_id, json.dumps(config), json.dumps(snapshot), json.dumps(versions), str(run_dir)])


def mark_training(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute("UPDATE train_runs SET status = 'training', updated_at = now() WHERE run_id = ?", [run_id])


def finish(con: duckdb.DuckDBPyConnection, run_id: str, status: str, step: int | None,
           metrics: dict[str, Any]) -> None:
    con.execute("UPDATE train_runs SET status = ?, step = ?, metrics = ?, updated_at = now() "
                "WHERE run_id = ?", [status, step, json.dumps(metrics), run_id])
