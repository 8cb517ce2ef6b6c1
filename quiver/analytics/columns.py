"""The event tables' columns (name, Athena type) as the compaction and the DuckDB
views read them, and their DuckDB spelling.

They are quiver.event_schema's `glue_columns()`, the same call cdk/event_analytics.py
builds both Glue tables from; the schema lives in the runtime package, so the
compaction's Lambda types its Parquet by the very list the tables were synthesized
from and a part never disagrees with its table.
"""

from __future__ import annotations

from quiver.event_schema import ColumnTypeError as ColumnTypeError
from quiver.event_schema import duckdb_type as duckdb_type
from quiver.event_schema import glue_columns

Column = tuple[str, str]


def event_columns() -> tuple[Column, ...]:
    """The event tables' columns, in table order."""
    return glue_columns()


def duckdb_columns(columns: tuple[Column, ...]) -> str:
    """The `columns={...}` argument of DuckDB's read_json for `columns`."""
    return "{" + ", ".join(f"'{name}': '{duckdb_type(kind)}'" for name, kind in columns) + "}"
