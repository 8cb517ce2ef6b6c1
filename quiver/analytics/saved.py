"""The saved queries (quiver/data/queries/): one SQL text per dialect, for DuckDB
(`quiver events query --saved NAME`, over a view `events` of either layout) and for
Athena (the named queries the CDK app creates, over the Glue tables).

A query is `<name>.sql`, written for DuckDB over `FROM events` with one `WHERE`;
its Athena text is derived: the table becomes the compacted one (or the one a
`-- athena-table: NAME` line names), the `WHERE` gains the partition filter of the
last ATHENA_DAYS days, and each `$NAME` parameter becomes `?`. A query whose
dialects differ in more than that (a function of another name) is two files,
`<name>.duckdb.sql` and `<name>.athena.sql`. Its first line is a `-- ` comment
describing it; each `-- param: NAME` line declares a parameter, used once.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Dialect = Literal["duckdb", "athena"]
DIALECTS: tuple[Dialect, ...] = ("duckdb", "athena")
_PARAM = re.compile(r"^--\s*param:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ATHENA_TABLE = re.compile(r"^--\s*athena-table:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
# What the Athena texts read by default, and how far back (the raw objects' expiry).
ATHENA_TABLE = "events_compacted"
ATHENA_DAYS = 7
_SINCE = f"\"date\" >= date_format(current_date - INTERVAL '{ATHENA_DAYS}' DAY, '%Y-%m-%d')"


class SavedQueryError(ValueError):
    """A saved query that is missing, malformed, or called with the wrong parameters."""


@dataclass(frozen=True, slots=True)
class SavedQuery:
    name: str
    description: str
    params: tuple[str, ...]
    sql: dict[Dialect, str]

    def text(self, dialect: Dialect) -> str:
        return self.sql[dialect]

    def bind(self, values: dict[str, str]) -> dict[str, str]:
        """The DuckDB parameters for `values`, refusing missing and unknown names."""
        missing = [p for p in self.params if p not in values]
        unknown = sorted(set(values) - set(self.params))
        if missing or unknown:
            wanted = ", ".join(f"--param {p}=..." for p in self.params) or "no parameters"
            raise SavedQueryError(f"saved query {self.name!r} takes {wanted}"
                                  + (f"; missing {missing}" if missing else "")
                                  + (f"; unknown {unknown}" if unknown else ""))
        return {p: values[p] for p in self.params}


@functools.cache
def saved_queries() -> dict[str, SavedQuery]:
    """Every saved query by name."""
    folder = resources.files("quiver.data").joinpath("queries")
    texts: dict[str, dict[Dialect, str]] = {}
    for entry in folder.iterdir():
        name, _, suffix = entry.name.partition(".")
        if suffix not in ("sql", "duckdb.sql", "athena.sql"):
            continue
        if not _NAME.match(name):
            raise SavedQueryError(f"saved query file {entry.name}: name must match {_NAME.pattern}")
        text = entry.read_text(encoding="utf-8")
        found: dict[Dialect, str] = (
            {"duckdb": text, "athena": athena_text(name, text)} if suffix == "sql"
            else {suffix.split(".")[0]: text})  # type: ignore[dict-item]
        for dialect, dialect_text in found.items():
            if dialect in texts.setdefault(name, {}):
                raise SavedQueryError(f"saved query {name!r} has two {dialect} texts")
            texts[name][dialect] = dialect_text
    return {name: _parse(name, sql) for name, sql in sorted(texts.items())}


def athena_text(name: str, duckdb: str) -> str:
    """The Athena dialect of a DuckDB text over `FROM events` (see the module)."""
    table_line = _ATHENA_TABLE.search(duckdb)
    table = table_line.group(1) if table_line else ATHENA_TABLE
    text, tables = re.subn(r"\bFROM events\b", f"FROM {table}", duckdb)
    text, wheres = re.subn(r"^WHERE ", f"WHERE {_SINCE}\n  AND ", text, flags=re.MULTILINE)
    if tables != 1 or wheres != 1:
        raise SavedQueryError(f"saved query {name!r}: one `FROM events` and one line-leading "
                              "`WHERE` are needed to derive its Athena text")
    for param in _PARAM.findall(duckdb):
        text, uses = re.subn(rf"\${param}\b", "?", text)
        if uses != 1:
            raise SavedQueryError(f"saved query {name!r} must use ${param} once")
    return text


def _parse(name: str, sql: dict[Dialect, str]) -> SavedQuery:
    missing = [d for d in DIALECTS if d not in sql]
    if missing:
        raise SavedQueryError(f"saved query {name!r} has no {missing[0]} text")
    first = sql["duckdb"].splitlines()[0] if sql["duckdb"].strip() else ""
    if not first.startswith("-- "):
        raise SavedQueryError(f"saved query {name!r} must start with a `-- ` description")
    params = tuple(_PARAM.findall(sql["duckdb"]))
    if tuple(_PARAM.findall(sql["athena"])) != params:
        raise SavedQueryError(f"saved query {name!r}: its dialects declare different params")
    for param in params:
        if f"${param}" not in sql["duckdb"]:
            raise SavedQueryError(f"saved query {name!r} declares {param} but never uses ${param}")
    if _body(sql["athena"]).count("?") != len(params):
        raise SavedQueryError(f"saved query {name!r}: its Athena text needs one ? per param")
    return SavedQuery(name=name, description=first[3:].strip(), params=params, sql=sql)


def _body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
