"""`wb labeled add`: record a labeled set's identities and sample index (not its pixels).

Registration is one transaction: a set is either fully registered or absent.
Aligned sets are checked structurally (signature, complete stream); unaligned
sets go through the same detection and alignment as ingest, and their primary
face crops are stored in the workspace.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as replace_field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from workbench.cluster import work_mapper
from workbench.errors import WorkbenchError
from workbench.faces.detectors import DetectorSpec
from workbench.formats.images import check_encoded
from workbench.formats.labeled import Sample, detect_format, open_source
from workbench.ingest.worker import FileResult, IngestOptions, process_bytes
from workbench.labeled import registry
from workbench.manifest.detector import DetectorChoice
from workbench.manifest.detector import choose as choose_detector
from workbench.manifest.detector import record as record_detector
from workbench.manifest.query import one, registered, transaction
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.parallel import chunked
from workbench.results import Result

ProgressFn = Callable[[int, int], None]
CHUNK = 4096


def register_labeled(
    workspace: Workspace,
    name: str,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    aligned: bool | None = None,
    image_column: str = "image",
    label_column: str = "label",
    workers: int | None = None,
    detector: str | DetectorSpec | None = None,
    progress: ProgressFn | None = None,
    lineage: dict[str, Any] | None = None,
    ray: str | None = None,
    replace: bool = False,
    outside_paths: bool = False,
) -> LabeledSetSummary:
    """Register `path` as labeled set `name`; registering the same contents again is a no-op.

    A name registered with other contents (other files, or the same files changed, or another
    detector) is refused, or with `replace` the old registration and everything derived from it
    are removed first, in the same transaction. `detector`: a spec, option text, or None for the
    workspace's detector (`manifest/detector.py`). `lineage` (where a derived set came from: `wb
    labeled clean`) is kept with the registration. `ray`: detect and align unaligned sets as Ray
    tasks on that cluster. `outside_paths`: HF images given by path may lie outside the
    dataset's folder (by default such a path is a per-sample reason).
    """
    root = Path(path).expanduser().resolve()
    fmt = detect_format(root) if fmt == "auto" else fmt
    aligned = (fmt == "rec") if aligned is None else aligned
    workers = 1 if aligned else (workers or os.cpu_count() or 1)
    choice = None if aligned else (DetectorChoice(detector) if isinstance(detector, DetectorSpec)
                                   else choose_detector(workspace, detector, strict=False))
    spec = choice.spec if choice else None
    contents = registry.fingerprint(root) if root.exists() else ""
    reg_id = registry.registration_id(name, str(root), fmt, contents, spec.key if spec else None,
                                      (image_column, label_column))
    params = {"name": name, "path": str(root), "format": fmt, "aligned": aligned,
              "image_column": image_column, "label_column": label_column,
              "detector": spec.key if spec else None, "registration": reg_id, "replace": replace}
    with work_mapper(workers, None if aligned else ray) as mapper, \
            open_run(workspace, "labeled add", params) as (con, run):
        existing = registry.find(con, name)
        if existing and _same(existing, reg_id, str(root), fmt):
            return replace_field(set_summary(con, name), already_registered=True)
        if existing and not replace:
            raise WorkbenchError(
                f"labeled set {name!r} is already registered with other contents ({existing.format} at "
                f"{existing.path}); choose another name, or --replace to drop it and what was "
                "derived from it")
        source = open_source(root, fmt, image_column=image_column, label_column=label_column,
                             cache_dir=workspace.root / "cache" / "hf", outside_paths=outside_paths)
        options = IngestOptions(root=str(workspace.root), aligned=False, detector=spec)
        stale_datasets = registry.app_datasets(con, existing) if existing else []
        try:
            with transaction(con):
                dropped = registry.drop(workspace, con, existing) if existing else {}
                rejected: Counter[str] = Counter()
                done = 0
                for chunk in chunked(source.stream(), CHUNK):
                    rows = _check_aligned(chunk) if aligned else _detect(chunk, mapper, options)
                    start = done
                    done += len(chunk)
                    rejected.update(r["reason"] for r in rows if r["reason"])
                    _insert_samples(con, name, start, chunk, rows)
                    if progress:
                        progress(done, done)
                n_ok = done - sum(rejected.values())
                if n_ok == 0:
                    reasons = ", ".join(f"{n} {r}" for r, n in rejected.most_common(3)) or "no images"
                    raise WorkbenchError(f"no usable images in {root} ({reasons}); nothing registered")
                _insert_identities(con, name, source.identities)
                notes = [choice.note] if choice and choice.note else []
                con.execute(
                    "INSERT INTO labeled_sets (name, path, format, aligned, options, n_identities, "
                    "n_images, n_rejected, registered_at, run_id, registration) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), ?, ?)",
                    [name, str(root), fmt, aligned,
                     json.dumps({"image_column": image_column, "label_column": label_column,
                                 "rejected": dict(rejected),
                                 "detector": spec.key if spec else None,
                                 "detector_record": spec.to_record() if spec else None,
                                 "fingerprint": contents, "notes": notes,
                                 "outside_paths": outside_paths,
                                 "empty_identities": source.notes.empty_identities[:100],
                                 "n_empty_identities": len(source.notes.empty_identities),
                                 **({"replaced": dropped} if existing else {}),
                                 **({"lineage": lineage} if lineage else {})}),
                     len(source.identities), n_ok, sum(rejected.values()), run.run_id, reg_id])
                if spec is not None:
                    record_detector(con, spec)
        finally:
            source.close()
        summary = replace_field(set_summary(con, name), replaced_app_datasets=stale_datasets,
                                warnings=_warnings(con, name))
        run.counts = summary.as_dict()
        return summary


def _warnings(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """Identities that lost every image to rejection: counted as identities, matched by nothing."""
    n, examples = con.execute(
        "SELECT count(*), list(identity ORDER BY label)[:3] FROM labeled_identities i WHERE set_name = ? "
        "AND n_images = 0 AND EXISTS (SELECT 1 FROM labeled_samples s WHERE s.set_name = i.set_name "
        "AND s.label = i.label)", [name]).fetchone()
    if not n:
        return []
    return [f"{n} identities had every image rejected (e.g. {', '.join(examples)}): they have no face to "
            "match, so overlap cannot exclude their people; see the rejection reasons above"]


def _same(existing: registry.Registration, reg_id: str, path: str, fmt: str) -> bool:
    """The same registration; a set registered before contents were fingerprinted is the same
    when path and format are."""
    if "fingerprint" not in existing.options:
        return (existing.path, existing.format) == (path, fmt)
    return existing.id == reg_id


@dataclass
class LabeledSetSummary(Result):
    """A registered labeled set (`wb labeled add` and `list`)."""

    name: str
    path: str
    format: str
    aligned: bool
    identities: int
    images: int
    rejected: dict[str, int]
    empty_identities: int
    empty_identity_examples: list[str]
    run_id: str
    registration: str
    detector: str | None = None
    already_registered: bool = False
    lineage: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    replaced: dict[str, int] | None = None  # rows of the old registration removed with --replace
    replaced_app_datasets: list[str] = field(default_factory=list)  # App datasets that showed it
    warnings: list[str] = field(default_factory=list)


def set_summary(con: duckdb.DuckDBPyConnection, name: str) -> LabeledSetSummary:
    row = one(con, "SELECT name, path, format, aligned, n_identities, n_images, n_rejected, "
                   "options, run_id, registration FROM labeled_sets WHERE name = ?", [name])
    if row is None:
        raise WorkbenchError(f"no labeled set named {name!r}; see `wb labeled list`")
    options = json.loads(row[7] or "{}")
    return LabeledSetSummary(
        name=row[0], path=row[1], format=row[2], aligned=row[3], identities=row[4], images=row[5],
        rejected=options.get("rejected", {}), empty_identities=options.get("n_empty_identities", 0),
        empty_identity_examples=options.get("empty_identities", [])[:10], run_id=row[8],
        registration=row[9] or row[0], detector=options.get("detector"),
        lineage=options.get("lineage"), notes=options.get("notes", []), replaced=options.get("replaced"))


def list_sets(con: duckdb.DuckDBPyConnection) -> list[LabeledSetSummary]:
    return [set_summary(con, r.name) for r in registry.every(con)]


@dataclass
class RemovedSet(Result):
    """`wb labeled remove`: the registration removed, the rows that referred to it, and the App
    datasets that showed it."""

    name: str
    registration: str
    identities: int
    images: int
    removed_rows: dict[str, int]
    app_datasets: list[str]
    run_id: str


def remove_set(workspace: Workspace, name: str) -> RemovedSet:
    """Forget a registration and everything derived from it (the set's files are untouched)."""
    with open_run(workspace, "labeled remove", {"name": name}) as (con, run):
        summary = set_summary(con, name)
        reg = registry.get(con, name)
        datasets = registry.app_datasets(con, reg)
        with transaction(con):
            removed = registry.drop(workspace, con, reg)
        result = RemovedSet(name, reg.id, summary.identities, summary.images, removed, datasets, run.run_id)
        run.counts = result.as_dict()
        return result


def _check_aligned(chunk: list[Sample]) -> list[dict[str, Any]]:
    rows = []
    for s in chunk:
        reason = s.reason or (check_encoded(s.data) if s.data is not None else "no image bytes")
        rows.append({"reason": reason, "crop_rel": None, "det_score": None, "quality": None})
    return rows


def _primary_face(data: bytes, options: IngestOptions) -> dict[str, Any]:
    result = process_bytes(data, FileResult(path="", size=len(data), mtime_ns=0), options)
    if not result.faces:
        return {"reason": result.reason, "crop_rel": None, "det_score": None, "quality": None}
    face = result.faces[0]
    return {"reason": None, "crop_rel": face.crop_rel, "det_score": face.det_score,
            "quality": face.quality}


def _detect(chunk: list[Sample], mapper: Any, options: IngestOptions) -> list[dict[str, Any]]:
    todo = [s.data for s in chunk if s.reason is None and s.data is not None]
    found: Iterator[dict[str, Any]] = iter(mapper(partial(_primary_face, options=options), todo))
    return [next(found) if s.reason is None and s.data is not None
            else {"reason": s.reason or "no image bytes", "crop_rel": None, "det_score": None,
                  "quality": None}
            for s in chunk]


def _insert_samples(con: duckdb.DuckDBPyConnection, name: str, start: int,
                    chunk: list[Sample], rows: list[dict[str, Any]]) -> None:
    table = pa.table({
        "sample_idx": pa.array(range(start, start + len(chunk)), pa.int64()),
        "label": pa.array([s.label for s in chunk], pa.int32()),
        "locator": [s.locator for s in chunk],
        "status": ["ok" if r["reason"] is None else "rejected" for r in rows],
        "reason": pa.array([r["reason"] for r in rows], pa.string()),
        "crop_rel": pa.array([r["crop_rel"] for r in rows], pa.string()),
        "det_score": pa.array([r["det_score"] for r in rows], pa.float32()),
        "quality": pa.array([r["quality"] for r in rows], pa.float32()),
    })
    with registered(con, sample_chunk=table):
        con.execute("INSERT INTO labeled_samples (set_name, sample_idx, label, locator, status, reason, "
                    "crop_rel, det_score, quality) "
                    "SELECT ?, * FROM sample_chunk", [name])


def _insert_identities(con: duckdb.DuckDBPyConnection, name: str, identities: list[str]) -> None:
    with registered(con, identity_names=pa.table({
        "label": pa.array(range(len(identities)), pa.int32()), "identity": identities})):
        con.execute(
            "INSERT INTO labeled_identities (set_name, label, identity, n_images) "
            "SELECT ?, n.label, n.identity, "
            "count(s.sample_idx) FILTER (s.status = 'ok') FROM identity_names n "
            "LEFT JOIN labeled_samples s ON s.set_name = ? AND s.label = n.label "
            "GROUP BY n.label, n.identity", [name, name])
