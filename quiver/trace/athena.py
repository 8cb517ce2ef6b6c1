"""Events read with Athena: one parameterized query over the Glue table of the
exported events (cdk/event_analytics.py), bounded by its date and hour partitions.

Values travel as `ExecutionParameters` (each a single SQL constant, which Athena
refuses to read as anything else), never spliced into the query text; the
database and table names are checked identifiers. The wait for the query is
bounded: past it the query is stopped and the error says what to change.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from quiver.trace.reader import Progress, no_progress
from quiver.trace.target import Event, Target, TraceError, Window

DEFAULT_TABLE = "events"
DEFAULT_TIMEOUT = 120.0
# A trace is of one message or one recipient; more rows than this is not a trace.
ROW_LIMIT = 10_000
# Glue names: lower-case letters, digits and underscores (Athena lowercases the rest).
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_POLL_FIRST, _POLL_MAX = 0.5, 5.0

# The columns a trace shows, as selected (names that are also SQL words quoted);
# structs are flattened so each value arrives as its own text (Athena renders a
# whole struct as "{code=451, ...}").
SELECT = (
    ('"event"', "event"), ('"at"', "at"), ("id", "id"), ("rcpt", "rcpt"),
    ("attempt", "attempt"), ("tenant", "tenant"), ("campaign", "campaign"),
    ("pool", "pool"), ("source", "source"), ("source_ip", "source_ip"),
    ("proxy", "proxy"), ("mx", "mx"), ("mx_ip", "mx_ip"), ("provider", "provider"),
    ("tls", "tls"), ("next_attempt_at", "next_attempt_at"), ("reason", "reason"),
    ("response.code", "response_code"), ("response.enhanced", "response_enhanced"),
    ("response.text", "response_text"), ("bounce.kind", "bounce_kind"),
    ("bounce.category", "bounce_category"), ("bounce.reason", "bounce_reason"),
    ("feedback_type", "feedback_type"), ("sqs_message_id", "sqs_message_id"),
)
_INTEGERS = frozenset({"attempt", "response_code"})
# What a control event adds, read for an actor's changes (quiver trace shows the
# adaptive ones that held a recipient back).
SELECTOR_FIELDS = ("source", "provider", "tenant", "campaign", "pool", "domain")
CONTROL_SELECT = (
    ("actor", "actor"), ("action", "action"), ("rule", "rule"), ('"until"', "until"),
    *((f"element_at(selector, '{f}')", f"selector_{f}") for f in SELECTOR_FIELDS),
)


def literal(value: str) -> str:
    """A SQL string constant for an execution parameter: quoted, quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str, *, what: str) -> str:
    if not _IDENTIFIER.match(name):
        raise TraceError(f"{what} {name!r}: expected letters, digits and underscores "
                         "(a Glue name)")
    return f'"{name.lower()}"'


def build_query(target: Target, window: Window, *, database: str,
                table: str = DEFAULT_TABLE) -> tuple[str, list[str]]:
    """(query text with `?` placeholders, execution parameters in order)."""
    (first_date, first_hour), (last_date, last_hour) = window.hours()[0], window.hours()[-1]
    select = SELECT + CONTROL_SELECT if target.actor is not None else SELECT
    columns = ", ".join(expr if expr == alias or expr == f'"{alias}"' else f"{expr} AS {alias}"
                        for expr, alias in select)
    where = [
        # Partition predicates: only the window's days, and of its first and last
        # day only its hours (partition projection prunes on these).
        ('"date" BETWEEN ? AND ?', [first_date, last_date]),
        ('("date" > ? OR "hour" >= ?)', [first_date, first_hour]),
        ('("date" < ? OR "hour" <= ?)', [last_date, last_hour]),
        # `at` is RFC 3339 UTC with milliseconds: it orders as text.
        ('"at" BETWEEN ? AND ?', [window.start_at, window.end_at]),
    ]
    if target.actor is not None:
        where.append(('"event" = ? AND actor = ?', ["control", target.actor]))
    elif target.address is not None:
        where.append(("(id = ? OR lower(rcpt) = ?)", [target.value, target.address]))
    else:
        where.append(("id = ?", [target.value]))
    text = (f"SELECT {columns}\nFROM {identifier(database, what='database')}."
            f"{identifier(table, what='table')}\nWHERE "
            + "\n  AND ".join(clause for clause, _ in where)
            + f'\nORDER BY "at", attempt\nLIMIT {ROW_LIMIT}')
    return text, [literal(v) for _, values in where for v in values]


def parse_results(pages: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Records from GetQueryResults pages: the first row of the first page repeats the
    column names; a NULL is a cell without VarCharValue."""
    out: list[Event] = []
    names: list[str] | None = None
    for page in pages:
        result = page.get("ResultSet", {})
        rows = result.get("Rows", [])
        if names is None:
            names = [c["Name"] for c in result.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
            if rows and [cell.get("VarCharValue") for cell in rows[0].get("Data", [])] == names:
                rows = rows[1:]
        for row in rows:
            values = [cell.get("VarCharValue") for cell in row.get("Data", [])]
            out.append(_record(dict(zip(names, values, strict=False))))
    return out


def _record(row: dict[str, str | None]) -> Event:
    flat: dict[str, Any] = {}
    for name, value in row.items():
        if name in _INTEGERS and value is not None:
            try:
                flat[name] = int(value)
            except ValueError:
                raise TraceError(f"Athena result: {name} is not an integer: {value!r}") from None
        else:
            flat[name] = value
    response = {k: flat.pop(f"response_{k}", None) for k in ("code", "enhanced", "text")}
    bounce = {k: flat.pop(f"bounce_{k}", None) for k in ("kind", "category", "reason")}
    flat["response"] = response if any(v is not None for v in response.values()) else None
    if bounce["kind"] is not None:
        flat["bounce"] = bounce
    if "actor" in flat:  # a control event: its selector's fields back in one map
        selector = {f: flat.pop(f"selector_{f}", None) for f in SELECTOR_FIELDS}
        flat["selector"] = {k: v for k, v in selector.items() if v is not None}
    return flat


class AthenaEventReader:
    name = "athena"

    def __init__(self, athena: Any, *, workgroup: str, database: str,
                 table: str = DEFAULT_TABLE, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._athena = athena
        self._workgroup = workgroup
        self._database = database
        self._table = table
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._summary = ""

    def describe(self) -> str:
        return self._summary

    def read(self, target: Target, window: Window, *,
             progress: Progress = no_progress) -> list[Event]:
        query, parameters = build_query(target, window, database=self._database,
                                        table=self._table)
        started = self._call("start_query_execution", QueryString=query,
                             QueryExecutionContext={"Database": self._database},
                             WorkGroup=self._workgroup, ExecutionParameters=parameters)
        query_id = str(started["QueryExecutionId"])
        execution = self.wait(query_id, progress=progress)
        pages = self._pages(query_id)
        records = parse_results(pages)
        scanned = execution.get("Statistics", {}).get("DataScannedInBytes")
        self._summary = (f"Athena query {query_id} in workgroup {self._workgroup}: "
                         f"{len(records)} rows, {scanned if scanned is not None else '?'} "
                         "bytes scanned")
        return records

    def wait(self, query_id: str, *, progress: Progress = no_progress) -> dict[str, Any]:
        """The finished execution; TraceError if it failed, or is stopped at the timeout."""
        deadline = self._clock() + self._timeout
        delay = _POLL_FIRST
        while True:
            execution: dict[str, Any] = self._call(
                "get_query_execution", QueryExecutionId=query_id)["QueryExecution"]
            status = execution.get("Status", {})
            state = status.get("State")
            if state == "SUCCEEDED":
                return execution
            if state in ("FAILED", "CANCELLED"):
                raise TraceError(f"Athena query {query_id} {state}: "
                                 f"{status.get('StateChangeReason', 'no reason given')}")
            left = deadline - self._clock()
            if left <= 0:
                self._call("stop_query_execution", QueryExecutionId=query_id)
                raise TraceError(
                    f"Athena query {query_id} still {state} after {self._timeout:.0f} s: "
                    "stopped; retry with a longer --athena-timeout or a shorter --since")
            progress(0, 1, f"query {state}")
            self._sleep(min(delay, left))
            delay = min(delay * 2, _POLL_MAX)

    def _pages(self, query_id: str) -> Iterable[Mapping[str, Any]]:
        kwargs: dict[str, Any] = {"QueryExecutionId": query_id}
        while True:
            page: dict[str, Any] = self._call("get_query_results", **kwargs)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            kwargs = {"QueryExecutionId": query_id, "NextToken": token}

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._athena, operation)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise TraceError(f"Athena {operation}: {exc}") from exc
