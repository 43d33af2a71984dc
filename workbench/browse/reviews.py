"""Reviewers' tags from the FiftyOne App, mirrored into the manifest's `reviews` table.

Tags and what `wb split` does with them:

- `not_face`: excluded ("not a face (review)").
- `overlap`: excluded as a known identity ("overlap (review)").
- `duplicate`: excluded as a duplicate ("duplicate (review)").
- `wrong_identity`: the suggested labeled identity is wrong, so an automatic
  overlap or ambiguous exclusion is lifted.
- `keep`: lifts an automatic duplicate or low-quality exclusion.

On a labeled set's faces (`wb browse --labeled`), for `wb labeled clean`:
`keep` protects a face from being dropped, `wrong_label` drops it, and
`same_person` merges its label with the labels the audit found to be the
same person.

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

from workbench.embed.store import LABELED_PREFIX
from workbench.manifest.query import registered, transaction
from workbench.results import Result

REVIEW_TAGS = ("not_face", "wrong_identity", "overlap", "duplicate", "keep", "wrong_label", "same_person")


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
            for t in ts or [] if t in REVIEW_TAGS}
    with registered(con, seen_faces=pa.table({"face_id": pa.array(face_ids, pa.string())})):
        stored = set(con.execute(
            "SELECT r.face_id, r.tag FROM reviews r JOIN seen_faces USING (face_id)").fetchall())
        known = {r[0] for r in con.execute(
            "SELECT face_id FROM faces JOIN seen_faces USING (face_id) UNION "
            "SELECT s.face_id FROM seen_faces s JOIN labeled_samples l "
            "ON s.face_id = ? || l.set_name || ':' || l.sample_idx", [LABELED_PREFIX]).fetchall()}
    source = f"fiftyone:{dataset.name}"
    added = [(f, t, _naive_utc(m), source, run_id) for (f, t), m in seen.items()
             if (f, t) not in stored and f in known]
    removed = [key for key in stored if key not in seen]
    with transaction(con):
        if added:
            con.executemany("INSERT INTO reviews (face_id, tag, reviewed_at, source, run_id) "
                            "VALUES (?, ?, ?, ?, ?)", added)
        if removed:
            con.executemany("DELETE FROM reviews WHERE face_id = ? AND tag = ?", removed)
    by_tag = dict(con.execute("SELECT tag, count(*) FROM reviews GROUP BY tag ORDER BY tag").fetchall())
    return ReviewPull(dataset.name, len(added), len(removed), by_tag)


def _naive_utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def review_tags(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Face id -> its review tags, to put back on samples a sync (re)creates."""
    tags: dict[str, list[str]] = {}
    for face_id, tag in con.execute("SELECT face_id, tag FROM reviews ORDER BY face_id, tag").fetchall():
        tags.setdefault(face_id, []).append(tag)
    return tags
