"""`--where`: one boolean expression over the documented face columns, checked before it runs.

The text is parsed by DuckDB itself (`json_serialize_sql`) as the condition of
`SELECT * FROM face_facts WHERE ...`; anything but a single plain SELECT whose
condition is made of the listed columns, constants, operators and a short list
of pure functions is refused: no subqueries, set operations, table functions
(which read files), or second statements.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from workbench.errors import WorkbenchError

EXPRESSION_CLASSES = frozenset({"CONJUNCTION", "COMPARISON", "OPERATOR", "BETWEEN", "CONSTANT",
                                "COLUMN_REF", "FUNCTION", "CAST", "CASE"})
FUNCTIONS = frozenset({
    "~~", "!~~", "~~*", "!~~*", "~~~", "like_escape", "ilike_escape", "+", "-", "*", "/", "%", "||",
    "lower", "upper", "length", "strlen", "trim", "concat", "substring", "substr", "contains",
    "starts_with", "ends_with", "prefix", "suffix", "regexp_matches", "abs", "round", "floor", "ceil",
    "greatest", "least", "coalesce", "isnan", "isinf", "list_contains", "len", "array_length",
})


def check_condition(where: str, columns: frozenset[str]) -> None:
    """Raise a one-line WorkbenchError unless `where` is a plain condition on `columns`."""
    sql = f"SELECT * FROM face_facts WHERE {where}"
    parsed = json.loads(duckdb.connect().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if parsed.get("error"):
        raise WorkbenchError(f"--where {where!r} is not a valid condition: "
                             f"{str(parsed.get('error_message', '')).splitlines()[0]}")
    statements = parsed.get("statements", [])
    node = statements[0]["node"] if len(statements) == 1 else {}
    plain = (node.get("type") == "SELECT_NODE" and not node.get("modifiers")
             and node.get("from_table", {}).get("type") == "BASE_TABLE"
             and node.get("from_table", {}).get("table_name") == "face_facts"
             and not node.get("group_expressions") and node.get("having") is None)
    if not plain:
        raise WorkbenchError(f"--where {where!r} must be one condition, not a query")
    _check(node["where_clause"], where, columns)


def _check(expr: Any, where: str, columns: frozenset[str]) -> None:
    if isinstance(expr, list):
        for item in expr:
            _check(item, where, columns)
        return
    if not isinstance(expr, dict):
        return
    kind = expr.get("class")
    if kind is not None:
        if kind not in EXPRESSION_CLASSES:
            raise WorkbenchError(f"--where {where!r}: {kind.lower()} expressions are not allowed")
        if kind == "COLUMN_REF":
            names = expr.get("column_names", [])
            if len(names) != 1 or names[0] not in columns:
                raise WorkbenchError(f"--where {where!r}: unknown column {'.'.join(names)!r}; "
                                     f"use {', '.join(sorted(columns))}")
        if kind == "FUNCTION" and expr.get("function_name") not in FUNCTIONS:
            raise WorkbenchError(f"--where {where!r}: function {expr.get('function_name')!r} is not "
                                 "allowed")
    for key, value in expr.items():
        if key != "literal":
            _check(value, where, columns)
