"""Erasure through lineage: a person forgotten in a labeled set is forgotten in its cleaned copies.

`wb labeled clean` writes a copy of a set (RecordIO, identity folders or a
Hugging Face parquet file) with `labels.csv` (old label -> new label) and
`dropped.csv` beside it, and registers the copy with its lineage. The copy's
labels differ from the source's (renumbered, merged, renamed folders), so a
person is followed by label through each copy's `labels.csv`, copy of copy
included. In each copy's folder, which the workbench wrote, the person's
photos are erased: folder files deleted, RecordIO image bytes zeroed in place
(every other record keeps its offset), parquet image bytes nulled in a
rewritten file; their rows in `labels.csv` are renamed `(erased)` and their
rows in `dropped.csv` removed. The user's own source files are never touched.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from workbench.errors import WorkbenchError
from workbench.formats.recordio import erase_records
from workbench.labeled import registry

ERASED = "(erased)"


@dataclass
class CopyErasure:
    """What forgetting a person takes from one cleaned copy."""

    set_name: str
    path: str
    format: str
    source_labels: list[int]  # the person's labels in the set this copy was cleaned from
    labels: list[int]  # the person's labels in this copy
    samples: list[int] = field(default_factory=list)  # sample_idx in this copy
    locators: list[str] = field(default_factory=list)
    files: int = 0  # files deleted or rewritten under `path`


def _label_map(path: Path) -> dict[int, int]:
    """old label -> new label of a copy's `labels.csv` (dropped labels absent)."""
    if not path.is_file():
        raise WorkbenchError(f"{path} is missing: cannot follow erased identities into this cleaned copy; "
                             "restore it from the copy's folder, or remove the copy with `wb labeled remove`")
    with open(path, newline="") as handle:
        return {int(r["old_label"]): int(r["new_label"]) for r in csv.DictReader(handle) if r["new_label"]}


def copies_of(con: duckdb.DuckDBPyConnection, erased: dict[str, set[int]]) -> list[CopyErasure]:
    """For each set and its erased labels, the registered copies (and copies of copies) holding
    the same people, with their samples."""
    sets = registry.every(con)
    found: list[CopyErasure] = []
    frontier = [(name, labels) for name, labels in erased.items() if labels]
    while frontier:
        source, labels = frontier.pop(0)
        for copy in sets:
            if (copy.lineage or {}).get("cleaned_from") != source:
                continue
            mapping = _label_map(Path(copy.path) / "labels.csv")
            new = sorted({mapping[old] for old in labels if old in mapping})
            if not new:
                continue
            rows = con.execute("SELECT sample_idx, locator FROM labeled_samples WHERE set_name = ? "
                               "AND label IN (SELECT unnest(?::INTEGER[])) ORDER BY sample_idx",
                               [copy.name, new]).fetchall()
            found.append(CopyErasure(copy.name, copy.path, copy.format, sorted(labels), new,
                                     [int(r[0]) for r in rows], [r[1] for r in rows]))
            frontier.append((copy.name, set(new)))
    return found


def erase_copy_files(copy: CopyErasure) -> int:
    """Erase the person's photos and names from the copy's folder; files changed."""
    root = Path(copy.path)
    changed = 0
    if copy.format == "folder":
        for locator in copy.locators:
            target = (root / locator).resolve()
            if target.is_relative_to(root) and target.is_file():
                target.unlink()
                changed += 1
    elif copy.format == "rec" and copy.locators:
        erase_records(root / "train.rec", [int(loc) for loc in copy.locators])
        changed += 1
    elif copy.format == "hf" and copy.locators:
        _null_parquet_images(root / "train.parquet", {int(loc) for loc in copy.locators})
        changed += 1
    changed += _rewrite_csv(root / "labels.csv", lambda r: _renamed(r, set(copy.source_labels)))
    changed += _rewrite_csv(root / "dropped.csv",
                            lambda r: None if int(r["old_label"]) in set(copy.source_labels) else r)
    copy.files = changed
    return changed


def _renamed(row: dict[str, str], labels: set[int]) -> dict[str, str]:
    if int(row["old_label"]) in labels:
        return {**row, "old_identity": ERASED, "new_identity": ERASED if row["new_label"] else ""}
    return row


def _rewrite_csv(path: Path, change: object) -> int:
    """Rewrite a CSV through `change` (row -> row or None to drop) atomically; 1 if it changed."""
    if not path.is_file():
        return 0
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in (change(row) for row in rows) if r is not None]  # type: ignore[operator]
    if kept == rows:
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)
    return 1


def _null_parquet_images(path: Path, rows: set[int]) -> None:
    """Rewrite a parquet file, row group by row group, with the image bytes of `rows` nulled."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    tmp = path.with_name(path.name + ".tmp")
    start = 0
    with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
        for i in range(source.num_row_groups):
            table = source.read_row_group(i)
            index = pa.array(range(start, start + table.num_rows))
            erase = pc.is_in(index, pa.array(sorted(rows), pa.int64()))
            if pc.any(erase).as_py():
                image = table.column("image").combine_chunks()
                empty = pa.scalar({"bytes": None, "path": None}, image.type)
                table = table.set_column(table.schema.get_field_index("image"), "image",
                                         pc.if_else(erase, empty, image))
            writer.write_table(table)
            start += table.num_rows
    os.replace(tmp, path)
