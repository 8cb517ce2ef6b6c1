"""DuckDB over a folder of event objects in the bucket's key layout (a download of
the events bucket, or `quiver demo --keep`): a view `events` typed by the event
table's columns, so no file sampling decides a column's type or drops it.

Columns and partitions read as in Athena: the partitions `event`, `date` and `hour`
are strings (`hour = '08'`), `meta` is `MAP(VARCHAR, VARCHAR)` (numbers and booleans
as their JSON text), and a field the columns do not name is not read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from quiver.analytics.columns import Column, duckdb_columns, event_columns
from quiver.analytics.compaction import duckdb_config
from quiver.analytics.layout import COMPACTED_PREFIX, PARQUET_SUFFIX, RAW_PREFIX, RAW_SUFFIX

Layout = Literal["raw", "compacted"]
LAYOUTS: tuple[Layout, ...] = ("raw", "compacted")
_PARTITIONS = "{'event': 'VARCHAR', 'date': 'VARCHAR', 'hour': 'VARCHAR'}"


class NoEvents(LookupError):
    """The folder holds no event objects of the layout asked for."""


def layout_glob(root: Path, layout: Layout) -> str:
    prefix, suffix = ((RAW_PREFIX, RAW_SUFFIX) if layout == "raw"
                      else (COMPACTED_PREFIX, PARQUET_SUFFIX))
    return str(root / prefix / "event=*" / "date=*" / "hour=*" / f"*{suffix}")


def events_view_sql(root: Path, layout: Layout,
                    columns: tuple[Column, ...] | None = None) -> str:
    """`CREATE VIEW events` over `root`'s objects of `layout`."""
    columns = columns or event_columns()
    pattern = layout_glob(root, layout).replace("'", "''")
    names = ", ".join(f'"{name}"' for name, _ in columns)
    if layout == "raw":
        source = (f"read_json('{pattern}', format='newline_delimited', compression='gzip', "
                  f"columns={duckdb_columns(columns)}, hive_partitioning=true, "
                  f"hive_types={_PARTITIONS})")
    else:
        source = (f"read_parquet('{pattern}', hive_partitioning=true, "
                  f"hive_types={_PARTITIONS})")
    # Names and types from the event schema; the pattern is quoted above.
    return f'CREATE VIEW events AS SELECT {names}, event, "date", hour FROM {source}'  # noqa: S608


def connect(root: Path, layout: Layout = "raw", *, threads: int = 2) -> Any:
    """An in-memory DuckDB connection with the view `events` over `root`."""
    import duckdb

    if not any(root.glob(layout_glob(root, layout)[len(str(root)) + 1:])):
        raise NoEvents(f"no {layout} event objects under {root} "
                       f"(looked for {layout_glob(root, layout)})")
    scratch = tempfile.mkdtemp(prefix="quiver-duckdb-")
    con = duckdb.connect(":memory:", config=duckdb_config(
        threads=threads, memory_limit="2GB", temp_directory=scratch))
    con.execute(events_view_sql(root, layout))
    return con


def run(con: Any, sql: str, params: dict[str, str] | None = None
        ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` on `con`."""
    cursor = con.execute(sql, params or None)
    names = [d[0] for d in cursor.description or []]
    return names, cursor.fetchall()
