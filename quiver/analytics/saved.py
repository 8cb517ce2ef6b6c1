"""The saved queries (quiver/data/queries/): one SQL text per dialect, for DuckDB
(`quiver events query --saved NAME`, over a view `events` of either layout) and for
Athena (the named queries the CDK app creates, over the Glue tables).

A query is `<name>.sql` when both dialects read it alike, else `<name>.duckdb.sql`
and `<name>.athena.sql`. Its first line is a `-- ` comment describing it; each
`-- param: NAME` line declares a parameter, written `$NAME` in DuckDB and `?` (in
the declared order) in Athena.
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
        if suffix == "sql":
            dialects: tuple[Dialect, ...] = DIALECTS
        elif suffix in ("duckdb.sql", "athena.sql"):
            dialects = (suffix.split(".")[0],)  # type: ignore[assignment]
        else:
            continue
        if not _NAME.match(name):
            raise SavedQueryError(f"saved query file {entry.name}: name must match {_NAME.pattern}")
        text = entry.read_text(encoding="utf-8")
        for dialect in dialects:
            if dialect in texts.setdefault(name, {}):
                raise SavedQueryError(f"saved query {name!r} has two {dialect} texts")
            texts[name][dialect] = text
    return {name: _parse(name, sql) for name, sql in sorted(texts.items())}


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
