"""Which faces go to the App, and with which facts: one SQL query over the stable views.

`--where` is a SQL condition on the columns of `face_facts` (browse/fields.py),
for example `split = 'excluded'` or `overlap_decision <> 'clean' AND quality > 0.5`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from workbench.browse.condition import check_condition
from workbench.browse.fields import FACTS_SQL, NAMES
from workbench.errors import WorkbenchError
from workbench.manifest.query import one


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
        check_condition(where, frozenset(NAMES))
        sql += f" WHERE ({where}\n)"
    try:
        return con.sql(sql + " ORDER BY face_id", params={"score_run": score_run}).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise WorkbenchError(f"--where {where!r} is not a valid condition on {', '.join(NAMES)}: "
                             f"{first}") from None
