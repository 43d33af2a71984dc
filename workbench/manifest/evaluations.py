"""The `evaluations` table: one row per `wb eval` of a training run, newest wins in reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb


@dataclass(frozen=True)
class Evaluation:
    eval_id: str
    run_id: str
    metrics: dict[str, Any]
    out_dir: Path  # metrics.json and arrays.npz

    @property
    def arrays(self) -> Path:
        return self.out_dir / "arrays.npz"


def insert(con: duckdb.DuckDBPyConnection, evaluation: Evaluation) -> None:
    con.execute("INSERT INTO evaluations (eval_id, run_id, metrics, artifacts_dir, created_at) "
                "VALUES (?, ?, ?, ?, now())",
                [evaluation.eval_id, evaluation.run_id, json.dumps(evaluation.metrics),
                 str(evaluation.out_dir)])


def with_key(con: duckdb.DuckDBPyConnection, run_id: str, key: str) -> Evaluation | None:
    """An evaluation of `run_id` made from the same checkpoint, data and options (`key`)."""
    rows = con.execute("SELECT eval_id, metrics, artifacts_dir FROM evaluations WHERE run_id = ? "
                       "AND json_extract_string(metrics, '$.eval_key') = ? ORDER BY created_at DESC LIMIT 1",
                       [run_id, key]).fetchall()
    if not rows:
        return None
    eval_id, metrics, out_dir = rows[0]
    return Evaluation(eval_id, run_id, json.loads(metrics), Path(out_dir))


def latest(con: duckdb.DuckDBPyConnection, run_id: str) -> Evaluation | None:
    rows = con.execute("SELECT eval_id, metrics, artifacts_dir FROM evaluations WHERE run_id = ? "
                       "ORDER BY created_at DESC LIMIT 1", [run_id]).fetchall()
    if not rows:
        return None
    eval_id, metrics, out_dir = rows[0]
    return Evaluation(eval_id, run_id, json.loads(metrics), Path(out_dir))
