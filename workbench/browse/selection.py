"""Which faces go to the App, and with which facts: one SQL query over the stable views.

`--where` is a SQL condition on the columns of `face_facts` (see COLUMNS),
for example `split = 'excluded'` or `overlap_decision <> 'clean' AND quality > 0.5`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from workbench.browse.condition import check_condition
from workbench.errors import WorkbenchError
from workbench.manifest.query import one

COLUMNS = (
    "face_id, image_id, crop_path, source, original_path, is_primary, quality, face_box, "
    "face_landmarks, split, exclusion_reason, dup_group, dup_representative, dup_group_size, "
    "overlap_set, overlap_identity, overlap_similarity, overlap_score, overlap_decision, "
    "max_prob, pred_identity, entropy"
)

FACTS_SQL = """
WITH ov AS (
    SELECT face_id,
           arg_max(labeled_set, score) AS overlap_set,
           arg_max(nearest_identity, score) AS overlap_identity,
           arg_max(similarity, score) AS overlap_similarity,
           max(score) AS overlap_score,
           CASE WHEN bool_or(decision = 'copy') THEN 'copy'
                WHEN bool_or(decision = 'overlap') THEN 'overlap'
                WHEN bool_or(decision = 'ambiguous') THEN 'ambiguous'
                ELSE 'clean' END AS overlap_decision
    FROM wb_overlap GROUP BY face_id
), dg AS (
    SELECT face_id, group_id, is_representative, count(*) OVER (PARTITION BY group_id) AS group_size
    FROM wb_dups
), sc AS (
    SELECT face_id, max_prob, pred_identity, entropy FROM wb_scores WHERE run_id = $score_run
)
SELECT f.face_id, f.image_id, f.crop_path, i.source, i.path AS original_path, f.is_primary,
       f.quality, f.bbox AS face_box, f.landmarks AS face_landmarks,
       s.split, s.reason AS exclusion_reason,
       dg.group_id AS dup_group, dg.is_representative AS dup_representative,
       dg.group_size AS dup_group_size,
       ov.overlap_set, ov.overlap_identity, ov.overlap_similarity, ov.overlap_score,
       ov.overlap_decision,
       sc.max_prob, sc.pred_identity, sc.entropy
FROM wb_faces f
JOIN wb_images i USING (image_id)
LEFT JOIN wb_splits s USING (face_id)
LEFT JOIN dg USING (face_id)
LEFT JOIN ov USING (face_id)
LEFT JOIN sc USING (face_id)
"""


def latest_score_run(con: duckdb.DuckDBPyConnection) -> str | None:
    row = one(con, "SELECT s.run_id FROM scores s JOIN train_runs r USING (run_id) "
                   "GROUP BY s.run_id ORDER BY max(r.updated_at) DESC LIMIT 1")
    return row[0] if row else None


def face_facts(con: duckdb.DuckDBPyConnection, *, where: str | None, score_run: str | None) -> pa.Table:
    """One row per selected face, ordered by face id."""
    if score_run is not None and one(con, "SELECT 1 FROM scores WHERE run_id = ? LIMIT 1",
                                     [score_run]) is None:
        raise WorkbenchError(f"run {score_run!r} has no scores: run `wb score --run {score_run}` first")
    sql = f"SELECT * FROM ({FACTS_SQL}) AS face_facts"
    if where:
        check_condition(where, frozenset(c.strip() for c in COLUMNS.split(",")))
        sql += f" WHERE ({where}\n)"
    try:
        return con.sql(sql + " ORDER BY face_id", params={"score_run": score_run}).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise WorkbenchError(f"--where {where!r} is not a valid condition on {COLUMNS}: {first}") from None
