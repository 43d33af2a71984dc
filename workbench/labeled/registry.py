"""A labeled set is a registration, not a name: the one owner of what a registration is and of
everything that refers to it.

Each `wb labeled add` gets a registration id, derived from the set's name, its
files (paths, sizes, modification times), format and detector. Every fact
derived from the set carries that id: vector keys (`S:<id>:<sample_idx>`), the
centres and calibrations, overlap rows, audit findings, reviews of its faces
and the App datasets that show it. A name that is removed and registered
again with other contents therefore gets another id, and nothing of the old
registration can be taken for the new one. `drop` removes a registration and
everything that refers to it in one transaction; `derived_from` finds the
cleaned copies registered from a set (through their lineage), which `wb
forget` follows.

Workspaces from before registration ids (schema < 11) keep their sets under
id = name, so their stored vector keys stay valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from workbench.errors import WorkbenchError
from workbench.manifest.query import one
from workbench.manifest.workspace import Workspace

ITEM_PREFIX = "S:"  # vector keys of labeled samples; unlabeled faces are keyed by their face id
UNLABELED_ITEMS_SQL = f"item_id NOT LIKE '{ITEM_PREFIX}%'"  # a condition on the embeddings table

# (table, column holding the registration id): facts derived from a registration, and the
# module that writes each (ARCHITECTURE.md). Rows keyed by vector item ids are matched by prefix.
DERIVED = (
    ("centres", "registration"),  # embed/compute.py (and its .npy files)
    ("calibrations", "registration"),  # curate/calibrate.py
    ("overlap", "registration"),  # curate/overlap.py
    ("labeled_findings", "registration"),  # labeled_audit/findings.py
    ("browse_datasets", "registration"),  # browse/labeled.py, through browse/sync.record_dataset
)
BY_ITEM = (("embeddings", "item_id"), ("reviews", "face_id"))  # embed/store.py, manifest/reviews.py


@dataclass(frozen=True)
class Registration:
    """One registration of a labeled set."""

    name: str
    id: str
    path: str
    format: str
    aligned: bool
    options: dict[str, Any]

    @property
    def item_prefix(self) -> str:
        return f"{ITEM_PREFIX}{self.id}:"

    def item_id(self, sample_idx: int) -> str:
        """The key of a sample's vectors and reviews."""
        return f"{self.item_prefix}{int(sample_idx)}"

    def item_ids(self, sample_idx: np.ndarray | list[int]) -> list[str]:
        prefix = self.item_prefix
        return [f"{prefix}{int(i)}" for i in sample_idx]

    def sample_of(self, item_id: str) -> int | None:
        """The sample_idx an item id of this registration names, else None."""
        return int(item_id.removeprefix(self.item_prefix)) if item_id.startswith(self.item_prefix) \
            else None

    @property
    def detector(self) -> dict[str, Any] | None:
        """The detector record its faces were found with (None: aligned, or recorded by key only)."""
        return self.options.get("detector_record")

    @property
    def lineage(self) -> dict[str, Any] | None:
        return self.options.get("lineage")


def registration_id(name: str, path: str, fmt: str, fingerprint: str, detector_key: str | None,
                    columns: tuple[str, str]) -> str:
    """Content-derived: the same files registered the same way get the same id, other contents
    another (so a removed name registered again never meets the old set's vectors)."""
    text = json.dumps([name, path, fmt, fingerprint, detector_key, list(columns)])
    return "r" + hashlib.sha256(text.encode()).hexdigest()[:15]


def fingerprint(root: Path) -> str:
    """A hash of the file names, sizes and modification times under `root` (or of the file):
    changes when the set's contents change, without reading a byte of them."""
    digest = hashlib.sha256()
    if root.is_file():
        stat = root.stat()
        digest.update(f"{root.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


_COLUMNS = "name, registration, path, format, aligned, options"


def _row(values: tuple) -> Registration:
    name, reg, path, fmt, aligned, options = values
    return Registration(name, reg or name, path, fmt, bool(aligned), json.loads(options or "{}"))


def find(con: duckdb.DuckDBPyConnection, name: str) -> Registration | None:
    row = one(con, f"SELECT {_COLUMNS} FROM labeled_sets WHERE name = ?", [name])
    return None if row is None else _row(row)


def get(con: duckdb.DuckDBPyConnection, name: str) -> Registration:
    found = find(con, name)
    if found is None:
        raise WorkbenchError(f"no labeled set named {name!r}; see `wb labeled list`")
    return found


def every(con: duckdb.DuckDBPyConnection) -> list[Registration]:
    return [_row(r) for r in con.execute(f"SELECT {_COLUMNS} FROM labeled_sets ORDER BY name").fetchall()]


def only_one(con: duckdb.DuckDBPyConnection) -> str | None:
    """The labeled set to use when the user names none: the only one registered, else None."""
    names = [r.name for r in every(con)]
    return names[0] if len(names) == 1 else None


def derived_from(con: duckdb.DuckDBPyConnection, name: str) -> list[Registration]:
    """Sets registered as cleaned copies of `name`, and copies of those, nearest first."""
    found: list[Registration] = []
    frontier = [name]
    sets = every(con)
    while frontier:
        source = frontier.pop(0)
        for reg in sets:
            if (reg.lineage or {}).get("cleaned_from") == source and reg not in found:
                found.append(reg)
                frontier.append(reg.name)
    return found


def crop_cache(workspace: Workspace, reg: Registration) -> Path:
    """Where the App's copies of a registration's crops are kept (sets stored without crop files)."""
    return workspace.root / "cache" / "labeled-crops" / reg.id


def references(con: duckdb.DuckDBPyConnection, reg: Registration) -> dict[str, int]:
    """How many rows of each table refer to `reg` (the registration's own rows included)."""
    counts = {table: one(con, f"SELECT count(*) FROM {table} WHERE {column} = ?", [reg.id])[0]
              for table, column in DERIVED}
    for table, column in BY_ITEM:
        counts[table] = one(con, f"SELECT count(*) FROM {table} WHERE starts_with({column}, ?)",
                            [reg.item_prefix])[0]
    for table in ("labeled_samples", "labeled_identities"):
        counts[table] = one(con, f"SELECT count(*) FROM {table} WHERE set_name = ?", [reg.name])[0]
    return counts


def app_datasets(con: duckdb.DuckDBPyConnection, reg: Registration) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM browse_datasets WHERE registration = ?",
                                      [reg.id]).fetchall()]


def drop(workspace: Workspace, con: duckdb.DuckDBPyConnection, reg: Registration) -> dict[str, int]:
    """Delete the registration and every row that refers to it (call inside a transaction);
    its centres files and cached App crops go too. Rows deleted per table."""
    counts = references(con, reg)
    for (path,) in con.execute("SELECT path FROM centres WHERE registration = ?", [reg.id]).fetchall():
        Path(path).unlink(missing_ok=True)
    shutil.rmtree(crop_cache(workspace, reg), ignore_errors=True)
    for table, column in DERIVED:
        con.execute(f"DELETE FROM {table} WHERE {column} = ?", [reg.id])
    for table, column in BY_ITEM:
        con.execute(f"DELETE FROM {table} WHERE starts_with({column}, ?)", [reg.item_prefix])
    for table in ("labeled_samples", "labeled_identities"):
        con.execute(f"DELETE FROM {table} WHERE set_name = ?", [reg.name])
    con.execute("DELETE FROM labeled_sets WHERE name = ?", [reg.name])
    return {k: v for k, v in counts.items() if v}
