"""The fast path into FiftyOne: sample documents written with the MongoDB driver.

FiftyOne's `add_samples` rebuilds an ODM document for every sample after
inserting it, and `set_values` writes one field at a time (about 1.3 ms a face
to add: 130 s for 100k faces), so the sync writes documents itself, shaped by
one sample and one Classification that FiftyOne built. This is the only module
that touches FiftyOne's private `_sample_collection` and `_make_dict`;
tests/test_browse.py compares what it writes with what `add_samples` writes,
field by field, so a FiftyOne upgrade that changes the layout fails there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from bson import ObjectId
from pymongo import UpdateOne

from workbench.browse.fields import LABELS, PLAIN

BATCH = 5_000


@dataclass
class Facts:
    """The selection as Python columns, with each face's position."""

    columns: dict[str, list[Any]]
    position: dict[str, int]

    @classmethod
    def of(cls, table: pa.Table) -> Facts:
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        return cls(columns, {f: i for i, f in enumerate(columns["face_id"])})


class RawWriter:
    def __init__(self, fo: Any, dataset: Any, facts: Facts) -> None:
        self.facts, self.collection = facts, dataset._sample_collection
        base = dataset._make_dict(fo.Sample(filepath="/template.jpg"))
        self.base = {k: v for k, v in base.items() if k not in ("filepath", "tags", "_rand")}
        self.label_base = {k: v for k, v in fo.Classification(label="x", confidence=0.0).to_dict().items()
                           if k not in ("_id", "label", "confidence")}

    def label(self, field: str, i: int) -> dict[str, Any] | None:
        label_col, conf_col = LABELS[field]
        label = self.facts.columns[label_col][i]
        if label is None:
            return None
        return {"_id": ObjectId(), **self.label_base, "label": label,
                "confidence": self.facts.columns[conf_col][i]}

    def document(self, i: int, tags: list[str], rand: float, now: datetime) -> dict[str, Any]:
        """The sample document of the selection's row `i`."""
        cols = self.facts.columns
        doc = {**self.base, "filepath": cols["crop_path"][i], "tags": tags, "_rand": rand,
               "created_at": now, "last_modified_at": now}
        doc |= {field: cols[field][i] for field in PLAIN if cols[field][i] is not None}
        doc |= {field: label for field in LABELS if (label := self.label(field, i)) is not None}
        return doc

    def changes(self, doc: dict[str, Any], i: int) -> dict[str, Any]:
        """The fields of stored `doc` whose values differ from the manifest's row `i`."""
        cols = self.facts.columns
        sets = {field: cols[field][i] for field in PLAIN if doc.get(field) != cols[field][i]}
        for field, (label_col, conf_col) in LABELS.items():
            stored = doc.get(field) or {}
            if (stored.get("label"), stored.get("confidence")) != (cols[label_col][i], cols[conf_col][i]):
                sets[field] = self.label(field, i)
        return sets

    def add_new(self, rows: list[int], tags: dict[str, list[str]],
                progress: Callable[[int, int], None] | None = None) -> None:
        """Insert the selection's `rows` as new samples, with reviewers' `tags` by face id."""
        face_ids = self.facts.columns["face_id"]
        rng = np.random.default_rng()
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            now = datetime.now(UTC).replace(tzinfo=None)
            draws = rng.random(len(batch))
            self.collection.insert_many([self.document(i, tags.get(face_ids[i], []), float(r), now)
                                         for i, r in zip(batch, draws, strict=True)], ordered=False)
            if progress:
                progress(start + len(batch), len(rows))

    def update_changed(self) -> dict[str, int]:
        """Compare every stored sample with the manifest; write what differs in bulk."""
        projection = {"face_id": True, **dict.fromkeys(PLAIN, True), **dict.fromkeys(LABELS, True)}
        now = datetime.now(UTC).replace(tzinfo=None)
        changed: Counter[str] = Counter()
        ops = []
        for doc in self.collection.find({}, projection):
            i = self.facts.position.get(doc.get("face_id"))
            if i is None:
                continue
            sets = self.changes(doc, i)
            if sets:
                changed.update(sets.keys())
                ops.append(UpdateOne({"_id": doc["_id"]}, {"$set": {**sets, "last_modified_at": now}}))
            if len(ops) >= BATCH:
                self.collection.bulk_write(ops, ordered=False)
                ops = []
        if ops:
            self.collection.bulk_write(ops, ordered=False)
        return dict(changed)
