"""The event table's columns (name, Athena type) as the runtime reads them, and their
DuckDB spelling.

The Glue tables' columns are built in cdk/event_analytics.py (`COLUMNS`). The code
that writes Parquet for the compacted table, and the DuckDB views over either
layout, need the same list at run time, where cdk/ is not packaged: they read
quiver/data/event_columns.json, which `python -m cdk.event_compaction` writes from
`COLUMNS`. The synth refuses a snapshot that differs from `COLUMNS`
(cdk/event_compaction.py), so a Parquet file never disagrees with its table.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

Column = tuple[str, str]
SNAPSHOT = "event_columns.json"
# Athena's scalar types and DuckDB's names for them.
_SCALARS = {
    "string": "VARCHAR", "int": "INTEGER", "bigint": "BIGINT", "double": "DOUBLE",
    "boolean": "BOOLEAN", "float": "FLOAT", "smallint": "SMALLINT", "timestamp": "TIMESTAMP",
}


class ColumnTypeError(ValueError):
    """An Athena type this module cannot spell for DuckDB."""


@functools.cache
def event_columns() -> tuple[Column, ...]:
    """The event tables' columns, in table order (the packaged snapshot)."""
    text = resources.files("quiver.data").joinpath(SNAPSHOT).read_text(encoding="utf-8")
    return tuple((str(name), str(kind)) for name, kind in json.loads(text)["columns"])


def snapshot_text(columns: tuple[Column, ...]) -> str:
    """The snapshot file's text for `columns` (what cdk.event_analytics writes)."""
    rows = ",\n".join(f"  {json.dumps(list(c))}" for c in columns)
    return f'{{"columns": [\n{rows}\n]}}\n'


def duckdb_type(athena: str) -> str:
    """`map<string,string>` -> `MAP(VARCHAR, VARCHAR)`; struct and array likewise."""
    athena = athena.strip()
    head, sep, rest = athena.partition("<")
    if not sep:
        try:
            return _SCALARS[athena.lower()]
        except KeyError:
            raise ColumnTypeError(f"unknown Athena type {athena!r}") from None
    if not rest.endswith(">"):
        raise ColumnTypeError(f"unbalanced type {athena!r}")
    args = _split_top(rest[:-1])
    kind = head.strip().lower()
    if kind == "map" and len(args) == 2:
        return f"MAP({duckdb_type(args[0])}, {duckdb_type(args[1])})"
    if kind == "array" and len(args) == 1:
        return f"{duckdb_type(args[0])}[]"
    if kind == "struct" and args:
        fields = []
        for arg in args:
            name, colon, inner = arg.partition(":")
            if not colon or not name.strip():
                raise ColumnTypeError(f"struct field without a type in {athena!r}")
            fields.append(f'"{name.strip()}" {duckdb_type(inner)}')
        return f"STRUCT({', '.join(fields)})"
    raise ColumnTypeError(f"unknown Athena type {athena!r}")


def _split_top(text: str) -> list[str]:
    """Split at the commas that are not inside <...>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def duckdb_columns(columns: tuple[Column, ...]) -> str:
    """The `columns={...}` argument of DuckDB's read_json for `columns`."""
    return "{" + ", ".join(f"'{name}': '{duckdb_type(kind)}'" for name, kind in columns) + "}"
