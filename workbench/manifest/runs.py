"""Every command invocation is a row in `runs`: what ran, with what, and how it ended."""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import duckdb

from workbench import __version__
from workbench.manifest.workspace import Workspace

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
        con.execute(
            "UPDATE runs SET ended_at = now(), status = ?, counts = ?, error = ? WHERE run_id = ?",
            [status, json.dumps(run.counts, default=str), error, run.run_id],
        )


@contextmanager
def open_run(
    ws: Workspace, command: str, params: dict[str, Any]
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Run]]:
    """Lock the workspace, open the manifest and record a run around the body."""
    with ws.lock(command), ws.connect() as con, recorded_run(con, command, params) as run:
        yield con, run
