"""What `wb status` reports: counts from the stable views, and the latest runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from workbench.results import Result

Rows = list[dict[str, Any]]


@dataclass
class Status(Result):
    """`wb status`: totals, then one list of rows per topic (each a small GROUP BY of a view)."""

    files: int
    images: int
    faces: int
    by_source: Rows
    by_status: Rows
    rejected_by_reason: Rows
    labeled_sets: Rows
    splits: Rows
    overlap: Rows
    train_runs: Rows
    reviews: Rows
    browse: Rows
    last_runs: Rows


def workspace_status(con: duckdb.DuckDBPyConnection, last_runs: int = 5) -> Status:
    def rows(sql: str) -> list[dict[str, Any]]:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    totals = rows(
        "SELECT (SELECT count(*) FROM wb_files) AS files,"
        " (SELECT count(*) FROM wb_images WHERE image_id IS NOT NULL) AS images,"
        " (SELECT count(*) FROM wb_faces) AS faces"
    )[0]
    runs = rows(
        "SELECT run_id, command, status, started_at, ended_at, counts FROM wb_runs "
        f"ORDER BY started_at DESC LIMIT {int(last_runs)}"
    )
    for run in runs:
        run["counts"] = json.loads(run["counts"]) if run["counts"] else {}
        for key in ("started_at", "ended_at"):
            run[key] = run[key].isoformat(timespec="seconds") if run[key] else None
    return Status(
        **totals,
        by_source=rows(
            "SELECT source, count(*) AS images, count(*) FILTER (status = 'ok') AS ok,"
            " sum(n_faces)::BIGINT AS faces FROM wb_images GROUP BY source ORDER BY source"
        ),
        by_status=rows(
            "SELECT status, count(*) AS images FROM wb_images GROUP BY status ORDER BY status"
        ),
        rejected_by_reason=rows(
            "SELECT reason, count(*) AS images FROM wb_images WHERE status = 'rejected'"
            " GROUP BY reason ORDER BY images DESC, reason"
        ),
        labeled_sets=rows("SELECT name, format, n_identities AS identities, n_images AS images "
                             "FROM wb_labeled_sets ORDER BY name"),
        splits=rows("SELECT split, count(*) AS faces FROM wb_splits GROUP BY split ORDER BY split"),
        overlap=rows("SELECT labeled_set, decision, count(*) AS faces FROM wb_overlap "
                        "GROUP BY ALL ORDER BY 1, 2"),
        train_runs=[{**r, "updated_at": r["updated_at"].isoformat(timespec="seconds")} for r in rows(
            "SELECT run_id, status, step, updated_at FROM wb_train_runs ORDER BY updated_at DESC LIMIT 5")],
        reviews=rows("SELECT tag, count(*) AS faces, max(reviewed_at)::VARCHAR AS latest, "
                        "string_agg(DISTINCT source, ', ') AS sources FROM wb_reviews "
                        "GROUP BY tag ORDER BY tag"),
        browse=rows("SELECT name AS dataset, n_samples AS samples, synced_at::VARCHAR AS synced_at "
                       "FROM wb_browse_datasets ORDER BY name"),
        last_runs=runs,
    )
