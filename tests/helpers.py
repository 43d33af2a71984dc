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
import numpy as np

from workbench.manifest.workspace import Workspace


def wb(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `wb` in a fresh process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def wb_json(*args: str) -> dict:
    return json.loads(wb(*args, "--json").stdout)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32: what embedding models output."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def manifest_rows(root: str | Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a query on a workspace's manifest, read-only."""
    con = duckdb.connect(str(Path(root) / "manifests" / "wb.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


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


def curated_workspace(root: Path, *, identities: int, per_identity: int, web: int, prefix: str,
                      seed: int, source: str | None = None, near_duplicates: int = 0) -> Path:
    """A workspace with a generated labeled set, ingested unlabeled faces, overlap, dedupe, splits.

    `near_duplicates` web images get a JPEG re-encoded copy (a different file, the same face).
    """
    from tests.conftest import noise_image

    for identity in range(identities):
        folder = root / "labeled" / f"{prefix}{identity}"
        folder.mkdir(parents=True)
        for k in range(per_identity):
            noise_image(seed + 100 * identity + k).save(folder / f"{k}.png")
    (root / "web").mkdir()
    for k in range(web):
        noise_image(seed + 50_000 + k).save(root / "web" / f"{k}.png")
    for k in range(near_duplicates):
        noise_image(seed + 50_000 + k).save(root / "web" / f"{k}-copy.jpg", quality=90)
    ws = root / "ws"
    wb("ingest", str(root / "web"), "--aligned", "-w", str(ws), *(["--source", source] if source else []))
    wb("labeled", "add", "gen", str(root / "labeled"), "--aligned", "-w", str(ws))
    wb("overlap", "--labeled", "gen", "-w", str(ws), "--per-identity", str(per_identity))
    wb("dedupe", "-w", str(ws))
    wb("split", "-w", str(ws), "--eval-unknown", "0.2", "--min-quality", "0")
    return ws
