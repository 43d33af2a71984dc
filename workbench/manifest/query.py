"""Small query helpers that leave no half-read result on the connection (DuckDB 2 forbids that)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import duckdb


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple | None:
    """The first row, or None; the result is read to the end."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception (Ctrl-C included)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, **relations: Any) -> Iterator[None]:
    """Arrow tables (or dicts of NumPy arrays) visible to SQL under their keyword names for the
    block, and unregistered however it ends. A statement that failed in the block (a constraint)
    leaves the transaction aborted: its ROLLBACK drops them, and that error is the one raised."""
    for name, relation in relations.items():
        con.register(name, relation)
    try:
        yield
    except BaseException:
        for name in relations:
            with suppress(duckdb.TransactionException):
                con.unregister(name)
        raise
    for name in relations:
        con.unregister(name)
