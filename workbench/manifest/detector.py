"""The workspace's face detector: recorded with the first faces it finds, the default afterwards.

Faces found by two detectors differ in box and landmark conventions, so a
workspace keeps one: `wb ingest` refuses another, `wb labeled add` uses the
workspace's unless told otherwise, and then says so on screen and records
the other one with the set. The detector is stored as a record (kind, weights
path and hash, options) in `wb_meta`, and rebuilt with
`DetectorSpec.from_record`; its key is never parsed back as option text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec
from workbench.manifest.query import one
from workbench.manifest.workspace import Workspace

DEFAULT = "yunet"  # shipped in the package: finds small web faces (dlib stays available by name)
META_KEY = "detector"
BEFORE_KEYS = "dlib (before detector keys)"  # faces of schema < 9 carry no key: dlib found them all


@dataclass(frozen=True)
class DetectorChoice:
    """The detector a command uses, and a line to show when it is not the workspace's own."""

    spec: DetectorSpec
    note: str | None = None


def recorded(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The workspace's detector record; for workspaces older than the record, a dlib record
    rebuilt from its faces' keys, or a record with only the key (no file to rebuild it from)."""
    row = one(con, "SELECT value FROM wb_meta WHERE key = ?", [META_KEY])
    if row is not None:
        return json.loads(row[0])
    row = one(con, "SELECT coalesce(detector, CASE WHEN det_score IS NOT NULL THEN ? END) AS d "
                   "FROM faces WHERE d IS NOT NULL GROUP BY d ORDER BY count(*) DESC LIMIT 1",
              [BEFORE_KEYS])
    if row is None:
        return None
    dlib = DetectorSpec.parse("dlib")
    if row[0] in (BEFORE_KEYS, dlib.key):
        return dlib.to_record()
    return {"key": row[0]}


def record(con: duckdb.DuckDBPyConnection, spec: DetectorSpec) -> None:
    """Record `spec` as the workspace's detector unless it already has one (call with its first faces)."""
    con.execute("INSERT INTO wb_meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [META_KEY, json.dumps(spec.to_record())])


def of_workspace(con: duckdb.DuckDBPyConnection) -> DetectorSpec:
    """The detector this workspace's faces are found with (the default before its first faces)."""
    found = recorded(con)
    return DetectorSpec.parse(DEFAULT) if found is None else _rebuild(found)


def _rebuild(found: dict[str, Any]) -> DetectorSpec:
    if "path" not in found:
        raise WorkbenchError(f"this workspace's faces were found with {found['key']}, whose weights file "
                             "was not recorded: name it with --detector (e.g. yunet:PATH)")
    return DetectorSpec.from_record(found)


def choose(workspace: Workspace, text: str | None, threshold: float | None = None, upsample: int = 0,
           *, strict: bool) -> DetectorChoice:
    """The detector for a command: `text` if given, else the workspace's, else the default.

    `strict` (ingest): another detector than the workspace's is refused; otherwise (labeled
    sets) it is used, with a note saying so."""
    found = None
    if workspace.manifest_path.exists():
        with workspace.connect(read_only=True) as con:
            found = recorded(con)
    if text is None:
        if found is None:
            return DetectorChoice(DetectorSpec.parse(DEFAULT, threshold, upsample))
        spec = _rebuild(found)
        if threshold is not None or upsample:
            spec = DetectorSpec(spec.kind, spec.path, threshold, upsample)
        note = None if spec.kind == DEFAULT else (
            f"this workspace keeps {spec.key}, the detector its faces were found with (new workspaces "
            f"use {DEFAULT}; --detector {DEFAULT} needs a new workspace)")
        return DetectorChoice(spec, note)
    spec = DetectorSpec.parse(text, threshold, upsample)
    if found is None or found["key"] == spec.key:
        return DetectorChoice(spec)
    if strict:
        raise WorkbenchError(f"this workspace's faces were found with {found['key']}, not {spec.key}: "
                             "leave out --detector to use the same one, or use a new workspace (-w)")
    return DetectorChoice(spec, f"detector {spec.key} is not the workspace's ({found['key']}): its crops "
                                "are aligned by another detector than the web faces'")
