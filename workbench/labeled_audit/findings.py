"""The `labeled_findings` table: its one writer and reader.

An audit replaces the findings of its (set, model) in one transaction, so a
re-run never duplicates rows and an interrupted one leaves the previous
findings whole. Samples are stored by `sample_idx`, the set's own index.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa

from workbench.errors import WorkbenchError
from workbench.labeled.registry import Registration
from workbench.labeled_audit.detect import Findings
from workbench.manifest.query import one, registered, transaction

KINDS = ("wrong_label", "same_person", "mixed_identity", "leakage", "duplicate")


def _indices(positions: list[int | None], sample_idx: np.ndarray) -> pa.Array:
    return pa.array([None if p is None else int(sample_idx[p]) for p in positions], pa.int64())


def replace_findings(con: duckdb.DuckDBPyConnection, registration: Registration, model_key: str,
                     run_id: str, findings: Findings, sample_idx: np.ndarray) -> None:
    """Store `findings` (positions in the set's usable samples) as the set's findings for the model."""
    table = pa.table({
        "kind": pa.array(findings.kind, pa.string()),
        "sample_idx": _indices(findings.sample, sample_idx),
        "label": pa.array(findings.label, pa.int32()),
        "other_label": pa.array(findings.other_label, pa.int32()),
        "other_sample_idx": _indices(findings.other_sample, sample_idx),
        "other_name": pa.array(findings.other_name, pa.string()),
        "score": pa.array(findings.score, pa.float32()),
        "evidence": pa.array([json.dumps(e) for e in findings.evidence], pa.string()),
    })
    with registered(con, new_findings=table), transaction(con):
        con.execute("DELETE FROM labeled_findings WHERE set_name = ? AND model_key = ?",
                    [registration.name, model_key])
        con.execute("INSERT INTO labeled_findings (set_name, model_key, kind, sample_idx, label, "
                    "other_label, other_sample_idx, other_name, score, evidence, run_id, registration) "
                    "SELECT ?, ?, kind, sample_idx, label, other_label, other_sample_idx, other_name, "
                    "score, evidence, ?, ? FROM new_findings",
                    [registration.name, model_key, run_id, registration.id])


def audited_model(con: duckdb.DuckDBPyConnection, set_name: str,
                  model_key: str | None = None) -> tuple[str, str]:
    """(model key, run id) of the newest audit of `set_name` (with `model_key`, if given)."""
    row = one(con, "SELECT model_key, run_id FROM labeled_findings f JOIN runs r USING (run_id) "
                   "WHERE set_name = ? AND (? IS NULL OR model_key = ?) "
                   "ORDER BY r.started_at DESC LIMIT 1", [set_name, model_key, model_key])
    if row is None:
        row = one(con, "SELECT json_extract_string(counts, '$.model_key'), run_id FROM runs "
                       "WHERE command = 'audit labeled' AND status = 'ok' "
                       "AND json_extract_string(params, '$.labeled') = ? "
                       "AND (? IS NULL OR json_extract_string(counts, '$.model_key') = ?) "
                       "ORDER BY started_at DESC LIMIT 1", [set_name, model_key, model_key])
    if row is None:
        raise WorkbenchError(f"{set_name} has not been audited; run `wb audit labeled {set_name}`")
    return row[0], row[1]


def read_findings(con: duckdb.DuckDBPyConnection, set_name: str, model_key: str) -> pa.Table:
    return con.sql("SELECT kind, sample_idx, label, other_label, other_sample_idx, other_name, score, "
                   "evidence FROM labeled_findings WHERE set_name = $s AND model_key = $m "
                   "ORDER BY kind, label, sample_idx",
                   params={"s": set_name, "m": model_key}).to_arrow_table()
