"""Every command invocation is a row in `runs`: what ran, with what, and how it ended.

Short commands hold the writer lock for their whole run (`open_run`): a row
still `running` when the next command takes the lock belongs to a process
that died, and is marked `killed`. Long runs that must not hold the lock while
they work (training: hours, several processes) are `detached`: their row is
written when they start and finished by `finish_detached`, which waits for
the lock like any writer; the sweep of dead rows leaves them alone.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import duckdb

from workbench import __version__
from workbench.manifest.workspace import Workspace, WorkspaceBusy

TRACKED_PACKAGES = ("duckdb", "numpy", "pillow", "dlib-bin", "opencv-python-headless", "torch")


@dataclass
class Run:
    run_id: str
    command: str
    counts: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    found = {"workbench": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def new_run_id(command: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{command.replace(' ', '-')}-{stamp}-{uuid.uuid4().hex[:6]}"


@contextmanager
def recorded_run(
    con: duckdb.DuckDBPyConnection, command: str, params: dict[str, Any]
) -> Iterator[Run]:
    """Record start and end; the caller holds the writer lock, so 'running' rows are dead."""
    run = Run(new_run_id(command), command)
    con.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
    con.execute(
        "INSERT INTO runs (run_id, command, params, versions, started_at, ended_at, status, counts, error) "
        "VALUES (?, ?, ?, ?, now(), NULL, 'running', NULL, NULL)",
        [run.run_id, command, json.dumps(params, default=str), json.dumps(versions())],
    )
    status, error = "ok", None
    try:
        yield run
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _record_end(con, run, status, error)


def _record_end(con: duckdb.DuckDBPyConnection, run: Run, status: str, error: str | None) -> None:
    """How the run ended. A failed COMMIT (a full disk, say) leaves DuckDB's transaction aborted:
    roll it back first, or the run would read `running` and later `killed`, not `failed`."""
    values = [status, json.dumps(run.counts, default=str), error, run.run_id]
    statement = "UPDATE runs SET ended_at = now(), status = ?, counts = ?, error = ? WHERE run_id = ?"
    try:
        con.execute(statement, values)
    except duckdb.Error:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        con.execute(statement, values)


DETACHED = "detached"  # a long run working without the lock; finished by finish_detached
FINISH_WAIT_S = 60


def start_detached(con: duckdb.DuckDBPyConnection, run_id: str, command: str, params: dict[str, Any]) -> None:
    """Record a long run's start (the caller holds the lock only for this)."""
    con.execute(
        "INSERT OR REPLACE INTO runs (run_id, command, params, versions, started_at, ended_at, status, "
        "counts, error) VALUES (?, ?, ?, ?, now(), NULL, ?, NULL, NULL)",
        [run_id, command, json.dumps(params, default=str), json.dumps(versions()), DETACHED])


def finish_detached(ws: Workspace, run_id: str, status: str, counts: dict[str, Any], error: str | None,
                    also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
    """Record how a detached run ended (`ok`, `failed`, `interrupted`), and whatever `also` writes,
    in one transaction; waits up to a minute for another command holding the workspace."""
    for attempt in range(FINISH_WAIT_S):
        try:
            with ws.lock(run_id), ws.connect() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute("UPDATE runs SET ended_at = now(), status = ?, counts = ?, error = ? "
                                "WHERE run_id = ?", [status, json.dumps(counts, default=str), error, run_id])
                    if also is not None:
                        also(con)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            return
        except WorkspaceBusy:
            if attempt == FINISH_WAIT_S - 1:
                raise
            time.sleep(1)


@contextmanager
def open_run(
    ws: Workspace, command: str, params: dict[str, Any]
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Run]]:
    """Lock the workspace, open the manifest and record a run around the body."""
    with ws.lock(command), ws.connect() as con, recorded_run(con, command, params) as run:
        yield con, run
