"""Reviewers' tags: the `reviews` table, the tags, and what each tag means.

The one owner of review tags. `browse` mirrors tags from the FiftyOne App into
the table (`record`); `curate/splits.py` asks which faces a review excludes or
lifts (`verdicts_view`); `labeled_audit/clean.py` reads the tags of a labeled
set's faces (`tags_with_prefix`). Nobody else queries the table.

On web faces, for `wb split`:

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
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import duckdb

# Exclusions a review makes, strongest first: (tag, the reason `wb split` records).
EXCLUDES = (("not_face", "not a face (review)"), ("overlap", "overlap (review)"),
            ("duplicate", "duplicate (review)"))
LIFTS_IDENTITY = "wrong_identity"  # lifts an automatic overlap / ambiguous exclusion
KEEP = "keep"  # lifts an automatic duplicate / low-quality exclusion; protects a labeled face
WRONG_LABEL = "wrong_label"  # a labeled face under the wrong label: `wb labeled clean` drops it
SAME_PERSON = "same_person"  # a labeled face's label is one person with the audit's match: merged
TAGS = (*(t for t, _ in EXCLUDES), LIFTS_IDENTITY, KEEP, WRONG_LABEL, SAME_PERSON)


def tags_of(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Item id -> its review tags, to put back on samples a sync (re)creates."""
    tags: dict[str, list[str]] = {}
    for face_id, tag in con.execute("SELECT face_id, tag FROM reviews ORDER BY face_id, tag").fetchall():
        tags.setdefault(face_id, []).append(tag)
    return tags


def tags_with_prefix(con: duckdb.DuckDBPyConnection, prefix: str) -> dict[str, set[str]]:
    """Tags of the items whose id starts with `prefix` (a labeled registration's samples)."""
    tags: dict[str, set[str]] = defaultdict(set)
    for item, tag in con.execute("SELECT face_id, tag FROM reviews WHERE starts_with(face_id, ?)",
                                 [prefix]).fetchall():
        tags[item].add(tag)
    return tags


def stored_for(con: duckdb.DuckDBPyConnection, relation: str) -> set[tuple[str, str]]:
    """(item, tag) of the items listed in the registered relation `relation` (column face_id)."""
    return set(con.execute(f"SELECT r.face_id, r.tag FROM reviews r JOIN {relation} USING (face_id)")
               .fetchall())


def record(con: duckdb.DuckDBPyConnection, added: list[tuple[str, str, datetime, str, str]],
           removed: list[tuple[str, str]]) -> dict[str, int]:
    """Add (item, tag, reviewed_at, source, run_id) rows and remove (item, tag) pairs, in the
    caller's transaction; the table's counts by tag afterwards."""
    if added:
        con.executemany("INSERT INTO reviews (face_id, tag, reviewed_at, source, run_id) "
                        "VALUES (?, ?, ?, ?, ?)", added)
    if removed:
        con.executemany("DELETE FROM reviews WHERE face_id = ? AND tag = ?", removed)
    return dict(con.execute("SELECT tag, count(*) FROM reviews GROUP BY tag ORDER BY tag").fetchall())


def verdicts_view(con: duckdb.DuckDBPyConnection) -> str:
    """A temporary view `review_verdicts` (face_id, excluded_reason, lifts_identity, lifts_auto):
    what reviews decide for each reviewed face. Returns the view's name."""
    excluded = " ".join(f"WHEN list_contains(tags, '{tag}') THEN '{reason}'" for tag, reason in EXCLUDES)
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW review_verdicts AS
        SELECT face_id, CASE {excluded} END AS excluded_reason,
               list_contains(tags, '{LIFTS_IDENTITY}') AS lifts_identity,
               list_contains(tags, '{KEEP}') AS lifts_auto
        FROM (SELECT face_id, list(tag) AS tags FROM reviews GROUP BY face_id)""")
    return "review_verdicts"
