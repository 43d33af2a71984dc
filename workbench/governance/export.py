"""`wb export`: a split of aligned faces as InsightFace RecordIO, an identity-folder tree or an
HF dataset, with `manifest.csv` (face ids, sources, hashes, labels) beside it.

Unlabeled splits have no identities: `--labels none` puts every face under
one label (`unlabeled`), `--labels clusters` uses the pseudo-identity clusters.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from workbench.errors import WorkbenchError
from workbench.formats.recordio import write_insightface_rec
from workbench.manifest.query import registered, transaction
from workbench.manifest.runs import open_run
from workbench.manifest.workspace import Workspace
from workbench.results import Result

FORMATS = ("rec", "folder", "hf")


@dataclass
class ExportResult(Result):
    """`wb export`: what was written where (also a row of wb_exports)."""

    export_id: str
    split: str
    format: str
    labels: str
    out: str
    faces: int
    identities: int


def run_export(workspace: Workspace, split: str, fmt: str, out: Path, labels: str = "none"
               ) -> ExportResult:
    """`wb export`: write a split's faces as a training set (RecordIO, identity folders or HF).

    The export and the faces it holds are recorded, so `wb forget` can mark it stale later.
    Returns `ExportResult`; raises `WorkbenchError` for an unknown split, format or a non-empty `out`."""
    if fmt not in FORMATS:
        raise WorkbenchError(f"--format must be one of {', '.join(FORMATS)}")
    if labels not in ("none", "clusters"):
        raise WorkbenchError("--labels must be none or clusters")
    out = out.expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"{out} exists and is not an empty folder; choose a new folder")
    params = {"split": split, "format": fmt, "out": str(out), "labels": labels}
    with open_run(workspace, "export", params) as (con, run):
        _finish_staged(con)
        rows = con.execute(
            "SELECT s.face_id, f.crop_rel, f.image_id, i.source, coalesce(c.cluster_id, 'none') "
            "FROM splits s JOIN faces f USING (face_id) JOIN wb_images i ON i.image_id = f.image_id "
            "LEFT JOIN clusters c ON c.face_id = s.face_id "
            "WHERE s.split = ? ORDER BY c.cluster_id, s.face_id", [split]).fetchall()
        if not rows:
            raise WorkbenchError(f"split {split!r} has no faces; see `wb split`")
        names = [r[4] if labels == "clusters" else "unlabeled" for r in rows]
        identities = sorted(set(names))
        label_of = {n: i for i, n in enumerate(identities)}
        order = sorted(range(len(rows)), key=lambda i: (label_of[names[i]], rows[i][0]))
        export_id = f"export-{uuid.uuid4().hex[:10]}"
        final, out = out, staging(out, export_id)  # written aside, renamed once recorded
        out.mkdir(parents=True)
        crops = [(workspace.root / rows[i][1]) for i in order]
        if fmt == "rec":
            write_insightface_rec(out / "train.rec", ((label_of[names[i]], c.read_bytes())
                                                      for i, c in zip(order, crops, strict=True)),
                                  num_classes=len(identities))
        elif fmt == "folder":
            for i, crop in zip(order, crops, strict=True):
                folder = out / names[i]
                folder.mkdir(exist_ok=True)
                shutil.copyfile(crop, folder / f"{rows[i][0]}{crop.suffix}")
        else:
            import datasets

            features = datasets.Features({"image": datasets.Image(),
                                          "label": datasets.ClassLabel(names=identities),
                                          "face_id": datasets.Value("string")})
            data = {"image": [{"bytes": c.read_bytes(), "path": c.name} for c in crops],
                    "label": [label_of[names[i]] for i in order],
                    "face_id": [rows[i][0] for i in order]}
            datasets.Dataset.from_dict(data, features=features).save_to_disk(str(out / "dataset"))
        with open(out / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["face_id", "image_id", "source", "crop_sha256", "label"])
            for i, crop in zip(order, crops, strict=True):
                writer.writerow([rows[i][0], rows[i][2], rows[i][3],
                                 hashlib.sha256(crop.read_bytes()).hexdigest(), names[i]])
        with registered(con, exported=pa.table({"face_id": [rows[i][0] for i in order]})), \
                transaction(con):
            con.execute("INSERT INTO exports (export_id, split, format, labels, out, n_faces, stale, "
                        "created_at, run_id) VALUES (?, ?, ?, ?, ?, ?, false, now(), ?)",
                        [export_id, split, fmt, labels, str(final), len(rows), run.run_id])
            con.execute("INSERT INTO export_items (export_id, face_id) "
                        "SELECT ?, face_id FROM exported", [export_id])
        _move_into_place(out, final)
        result = ExportResult(export_id=export_id, split=split, format=fmt, labels=labels, out=str(final),
                              faces=len(rows), identities=len(identities))
        run.counts = result.as_dict()
        return result


def staging(out: Path, export_id: str) -> Path:
    """Where an export is written before it is recorded: beside `out`, hidden, named for the export."""
    return out.parent / f".{out.name}.{export_id}.partial"


def _move_into_place(staged: Path, out: Path) -> None:
    if out.is_dir():
        out.rmdir()  # empty (checked before writing): rename(2) would replace it, but say so
    os.replace(staged, out)


def _finish_staged(con: duckdb.DuckDBPyConnection) -> None:
    """Exports recorded by a run killed before it renamed their folder: rename them now. (A run
    killed before recording leaves only its `.partial` folder, which no row names.)"""
    for export_id, out in con.execute("SELECT export_id, out FROM exports").fetchall():
        staged = staging(Path(out), export_id)
        if staged.is_dir() and not (Path(out).exists() and any(Path(out).iterdir())):
            _move_into_place(staged, Path(out))
