"""Rewrite the manifest into a fresh file, so rows that were deleted leave no bytes behind.

DuckDB marks deleted rows and reuses their pages later; until then the old
bytes sit in the file. After an erasure the manifest is copied table by table
into a new file, which replaces the old one under the writer lock. `wb forget`
does it after each request unless told not to (`--no-compact`), in which case
`wb_meta` records that a rewrite is owed and `wb compact` (or the next
compacting forget) pays it once for all the requests in between.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from workbench.errors import WorkbenchError
from workbench.manifest.query import one
from workbench.manifest.workspace import Workspace
from workbench.results import Result

PENDING = "compaction_pending"  # wb_meta key: erasures since the last rewrite


def sql_string(text: str) -> str:
    """A SQL string literal (for statements that take no parameters, such as ATTACH)."""
    return "'" + text.replace("'", "''") + "'"


def mark_pending(con: duckdb.DuckDBPyConnection) -> None:
    """Count one more erasure whose bytes may still be in the file."""
    con.execute("INSERT INTO wb_meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE "
                "SET value = (CAST(wb_meta.value AS INTEGER) + 1)::VARCHAR", [PENDING])


def pending(con: duckdb.DuckDBPyConnection) -> int:
    """Erasures not yet rewritten out of the file."""
    row = one(con, "SELECT value FROM wb_meta WHERE key = ?", [PENDING])
    return int(row[0]) if row else 0


def _copy_to_fresh(con: duckdb.DuckDBPyConnection, fresh: Path) -> None:
    """Copy the open manifest into a new file: deleted rows leave no trace in free pages."""
    fresh.unlink(missing_ok=True)
    database = one(con, "SELECT current_database()")[0]
    con.execute("CHECKPOINT")
    con.execute(f"ATTACH {sql_string(str(fresh))} AS wb_fresh")
    try:
        con.execute(f'COPY FROM DATABASE "{database}" TO wb_fresh')
    finally:
        con.execute("DETACH wb_fresh")


def compact_locked(workspace: Workspace, run_id: str | None = None) -> str:
    """The rewrite, for a caller holding the writer lock; "done" when it is."""
    path = workspace.manifest_path
    fresh = path.with_name("wb.compact.duckdb")
    with workspace.connect() as con:
        con.execute("DELETE FROM wb_meta WHERE key = ?", [PENDING])
        try:
            _copy_to_fresh(con, fresh)
        except Exception as exc:
            mark_pending(con)
            if run_id is not None:
                con.execute("UPDATE runs SET status = 'failed', error = ? WHERE run_id = ?",
                            [f"compaction: {exc}", run_id])
            raise WorkbenchError(f"erased from the manifest, but rewriting it failed ({exc}): the old "
                                 "file's free pages may still hold the rows; run `wb compact` to retry"
                                 ) from None
    os.replace(fresh, path)
    Path(str(path) + ".wal").unlink(missing_ok=True)
    return "done"


@dataclass
class CompactResult(Result):
    """`wb compact`: the erasures rewritten out of the file, and the file's size before and after."""

    erasures: int
    bytes_before: int
    bytes_after: int
    seconds: float


def run_compact(workspace: Workspace) -> CompactResult:
    """Rewrite the manifest now (whether or not erasures are pending)."""
    with workspace.lock("compact"):
        with workspace.connect(read_only=True) as con:
            owed = pending(con)
        before = workspace.manifest_path.stat().st_size
        start = time.perf_counter()
        compact_locked(workspace)
        return CompactResult(owed, before, workspace.manifest_path.stat().st_size,
                             round(time.perf_counter() - start, 2))
