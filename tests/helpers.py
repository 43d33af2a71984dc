"""Helpers shared by tests: run the real CLI, snapshot a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from workbench.workspace import Workspace


def wb(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `wb` in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def wb_json(*args: str) -> dict:
    return json.loads(wb(*args, "--json").stdout)


def manifest_snapshot(root: Path) -> dict[str, list[tuple]]:
    """Content of the data tables without run ids, plus the crop files' hashes."""
    ws = Workspace.at(root)
    con = duckdb.connect(str(ws.manifest_path), read_only=True)
    try:
        snap = {
            "images": con.execute("SELECT * EXCLUDE (run_id) FROM images ORDER BY image_id").fetchall(),
            "faces": con.execute("SELECT * EXCLUDE (run_id) FROM faces ORDER BY face_id").fetchall(),
            "files": con.execute("SELECT * EXCLUDE (run_id) FROM files ORDER BY path").fetchall(),
        }
    finally:
        con.close()
    snap["crop_files"] = sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in (root / "crops").rglob("*") if p.is_file()
    )
    return snap


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 60) -> None:
    """Start `cmd` and SIGKILL its whole process group as soon as `ready()` holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
