"""Workspace layout and the single-writer lock.

A workspace is a directory holding the manifest (`manifests/wb.duckdb`) and the
content-addressed artifacts the manifest points to (aligned crops, embeddings,
runs). Exactly one `wb` process may write a workspace at a time; others get a
clear error instead of a corrupt manifest.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from workbench.errors import WorkbenchError
from workbench.manifest.schema import migrate

ENV_VAR = "WB_WORKSPACE"


class WorkspaceBusy(WorkbenchError):
    """Another process holds the workspace."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Resolve the workspace from an argument, `$WB_WORKSPACE`, or the cwd."""
        chosen = root if root is not None else os.environ.get(ENV_VAR) or "."
        return cls(Path(chosen).expanduser().resolve())

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifests" / "wb.duckdb"

    @property
    def lock_path(self) -> Path:
        return self.root / "manifests" / "wb.lock"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the exclusive writer lock; fail fast with who holds it."""
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WorkbenchError(f"workspace {self.root} is not writable: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise WorkspaceBusy(
                    f"workspace {self.root} is in use by another wb process ({holder}); "
                    "wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the manifest, migrating it to the current schema when writable."""
        if read_only and not self.exists():
            raise WorkbenchError(
                f"no manifest at {self.manifest_path}; run `wb ingest` first or pass -w DIR"
            )
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(self.manifest_path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise WorkspaceBusy(
                    f"workspace {self.root} is being written by another wb process; "
                    "try again when it finishes"
                ) from None
            raise WorkbenchError(f"cannot open manifest {self.manifest_path}: {exc}") from exc
        try:
            # DuckDB draws a progress bar on stdout for queries past 2 s (a million-face ingest
            # has some), which would corrupt `--json` output; the workbench shows its own progress
            con.execute("SET enable_progress_bar = false")
            con.execute("SET enable_progress_bar_print = false")
            if not read_only:
                migrate(con)
                con.execute(
                    "INSERT OR REPLACE INTO wb_meta (key, value) VALUES ('root', ?)", [str(self.root)]
                )
            yield con
        finally:
            con.close()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')}, `wb {info.get('command')}`"
    except (OSError, ValueError):
        return "unknown holder"
