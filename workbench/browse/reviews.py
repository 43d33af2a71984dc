"""Reviewers' tags from the FiftyOne App, mirrored into the manifest (`manifest/reviews.py`
owns the table and what each tag means).

A pull makes the manifest match the tags on the samples it sees: new tags are
added with the sample's last-modified time and the dataset as the source,
tags removed in the App are removed. Faces not in the dataset keep their reviews.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from workbench.labeled.registry import ITEM_PREFIX
from workbench.manifest import reviews
from workbench.manifest.query import registered, transaction
from workbench.results import Result


@dataclass
class ReviewPull(Result):
    """`wb review pull`: tags added and removed, and the manifest's reviews by tag."""

    dataset: str
    added: int
    removed: int
    reviews_by_tag: dict[str, int]


def pull_reviews(con: duckdb.DuckDBPyConnection, dataset: Any, run_id: str) -> ReviewPull:
    """Mirror the review tags of `dataset`'s samples into `reviews`; counts of what changed."""
    face_ids, tags, modified = dataset.values(["face_id", "tags", "last_modified_at"])
    seen = {(f, t): m for f, ts, m in zip(face_ids, tags, modified, strict=True)
            for t in ts or [] if t in reviews.TAGS}
    with registered(con, seen_faces=pa.table({"face_id": pa.array(face_ids, pa.string())})):
        stored = reviews.stored_for(con, "seen_faces")
        known = {r[0] for r in con.execute(
            "SELECT face_id FROM faces JOIN seen_faces USING (face_id) UNION "
            "SELECT s.face_id FROM seen_faces s JOIN labeled_samples l "
            "JOIN labeled_sets ls ON ls.name = l.set_name "
            "ON s.face_id = ? || ls.registration || ':' || l.sample_idx", [ITEM_PREFIX]).fetchall()}
    source = f"fiftyone:{dataset.name}"
    added = [(f, t, _naive_utc(m), source, run_id) for (f, t), m in seen.items()
             if (f, t) not in stored and f in known]
    removed = [key for key in stored if key not in seen]
    with transaction(con):
        by_tag = reviews.record(con, added, removed)
    return ReviewPull(dataset.name, len(added), len(removed), by_tag)


def _naive_utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
