"""`quiver trace` pieces without a network: the Athena query (partition predicates,
values only as execution parameters, quotes doubled), the parsing of GetQueryResults
pages in the shape Athena returns them, the bounded wait, the window's partitions,
the JSONL scan and the verdicts."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from typing import Any

import pytest

from quiver.trace.athena import SELECT, AthenaEventReader, build_query, literal, parse_results
from quiver.trace.claims import Claim
from quiver.trace.s3_reader import scan
from quiver.trace.target import Target, TraceError, Window
from quiver.trace.verdict import ordered, recipients


def epoch(text: str) -> float:
    return datetime.fromisoformat(text + "+00:00").timestamp()


WINDOW = Window(start=epoch("2026-11-25T22:30:00"), end=epoch("2026-11-26T01:10:00"))


def test_window_partitions_are_the_hours_it_touches() -> None:
    assert WINDOW.hours() == [("2026-11-25", "22"), ("2026-11-25", "23"),
                              ("2026-11-26", "00"), ("2026-11-26", "01")]
    assert WINDOW.days() == [("2026-11-25", "22", "23"), ("2026-11-26", "00", "01")]
    assert (WINDOW.start_at, WINDOW.end_at) == ("2026-11-25T22:30:00.000Z",
                                                "2026-11-26T01:10:00.000Z")
    with pytest.raises(TraceError, match="--since"):
        Window.last(0, now=1e9)


def test_query_bounds_days_and_hours_and_carries_values_only_as_parameters() -> None:
    target = Target.parse("O'Brien@Example.TEST")
    text, parameters = build_query(target, WINDOW, database="quiver_events")
    assert text.count("?") == len(parameters)
    assert 'FROM "quiver_events"."events"' in text
    assert '"date" BETWEEN ? AND ?' in text
    assert '("date" > ? OR "hour" >= ?)' in text and '("date" < ? OR "hour" <= ?)' in text
    assert "(id = ? OR lower(rcpt) = ?)" in text
    assert "Brien" not in text and "2026" not in text
    assert parameters == [
        "'2026-11-25'", "'2026-11-26'",  # the days
        "'2026-11-25'", "'22'",  # the first day from its first hour
        "'2026-11-26'", "'01'",  # the last day up to its last hour
        "'2026-11-25T22:30:00.000Z'", "'2026-11-26T01:10:00.000Z'",
        "'O''Brien@Example.TEST'", "'o''brien@example.test'",  # quotes doubled
    ]
    # Every selected column is in the Glue table (generated from quiver.event_schema).
    from quiver.event_schema import PARTITION_KEYS, glue_columns

    names = {n for n, _ in glue_columns()} | {n for n, _ in PARTITION_KEYS}
    assert {expr.strip('"').split(".")[0] for expr, _ in SELECT} <= names


def test_an_id_is_matched_on_id_alone_and_a_hostile_value_stays_a_constant() -> None:
    text, parameters = build_query(Target.parse("msg-1"), WINDOW, database="quiver_events")
    assert "id = ?" in text and "rcpt" not in text.split("WHERE")[1]
    assert parameters[-1] == "'msg-1'"
    assert literal("x' OR '1'='1") == "'x'' OR ''1''=''1'"
    with pytest.raises(TraceError, match="database"):
        build_query(Target.parse("msg-1"), WINDOW, database='events"; DROP TABLE x; --')


def test_targets_refuse_what_no_id_or_address_holds() -> None:
    for bad in ("", "   ", "a b@x.test", "a\r\nb", "x" * 300):
        with pytest.raises(TraceError):
            Target.parse(bad)
    target = Target.parse("<Ann@Example.test>")
    assert target.value == "Ann@Example.test" and target.address == "ann@example.test"
    assert target.matches({"id": "m", "rcpt": "ANN@example.TEST"})
    assert not target.matches({"id": "m", "rcpt": "bob@example.test"})
    assert Target.parse("m-1").matches({"id": "m-1", "rcpt": None})


def _column(name: str) -> dict[str, Any]:
    return {"CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": name,
            "Label": name, "Type": "integer" if name in ("attempt", "response_code")
            else "varchar", "Precision": 2147483647, "Scale": 0, "Nullable": "UNKNOWN",
            "CaseSensitive": True}


def _row(values: dict[str, Any]) -> dict[str, Any]:
    return {"Data": [{"VarCharValue": str(values[a])} if values.get(a) is not None else {}
                     for _, a in SELECT]}


# GetQueryResults as Athena returns it: the first page's first row repeats the column
# names, a NULL is a cell without VarCharValue, a further page follows a NextToken.
PAGES = [
    {"UpdateCount": 0, "NextToken": "token-1", "ResultSet": {
        "ResultSetMetadata": {"ColumnInfo": [_column(a) for _, a in SELECT]},
        "Rows": [{"Data": [{"VarCharValue": a} for _, a in SELECT]},
                 _row({"event": "deferred", "at": "2026-11-26T00:01:00.000Z", "id": "m-1",
                       "rcpt": "ann@example.test", "attempt": 1, "source": "s1",
                       "source_ip": "198.51.100.7", "response_code": 451,
                       "response_enhanced": "4.7.1", "response_text": "greylisted",
                       "next_attempt_at": "2026-11-26T00:06:00.000Z"})]}},
    {"UpdateCount": 0, "ResultSet": {
        "ResultSetMetadata": {"ColumnInfo": [_column(a) for _, a in SELECT]},
        "Rows": [_row({"event": "bounced", "at": "2026-11-26T00:07:00.000Z", "id": "m-1",
                       "rcpt": "ann@example.test", "attempt": 2, "response_code": 550,
                       "response_enhanced": "5.1.1", "response_text": "user unknown",
                       "bounce_kind": "hard", "bounce_category": "bad-mailbox",
                       "bounce_reason": "user unknown"})]}},
]


def test_results_parse_into_records_of_the_event_shape() -> None:
    deferred, bounced = parse_results(PAGES)
    assert deferred["event"] == "deferred" and deferred["attempt"] == 1
    assert deferred["response"] == {"code": 451, "enhanced": "4.7.1", "text": "greylisted"}
    assert deferred["reason"] is None and "bounce" not in deferred
    assert bounced["bounce"] == {"kind": "hard", "category": "bad-mailbox",
                                 "reason": "user unknown"}
    (recipient,) = recipients([bounced, deferred], [])
    assert recipient.verdict() == ("bounced: 550 5.1.1 user unknown [hard/bad-mailbox] at "
                                   "2026-11-26T00:07:00.000Z")
    assert parse_results([{"ResultSet": {"ResultSetMetadata": {"ColumnInfo": []},
                                         "Rows": []}}]) == []


class _Executions:
    """Answers GetQueryExecution with scripted states (the wait's logic alone; the
    calls over HTTP are tested on moto's server)."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.stopped: list[str] = []

    def get_query_execution(self, QueryExecutionId: str) -> dict[str, Any]:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"QueryExecution": {"QueryExecutionId": QueryExecutionId, "Status": {
            "State": state, "StateChangeReason": "SYNTAX_ERROR: line 1:8"}}}

    def stop_query_execution(self, QueryExecutionId: str) -> dict[str, Any]:
        self.stopped.append(QueryExecutionId)
        return {}


def _reader(client: _Executions, *, timeout: float = 60) -> tuple[AthenaEventReader,
                                                                   list[float]]:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return AthenaEventReader(client, workgroup="quiver", database="quiver_events",
                             timeout=timeout, clock=lambda: now[0], sleep=sleep), slept


def test_the_wait_polls_with_backoff_and_reports_a_failure() -> None:
    reader, slept = _reader(_Executions(["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]))
    assert reader.wait("q1")["Status"]["State"] == "SUCCEEDED"
    assert slept == [0.5, 1.0, 2.0]
    failing, _ = _reader(_Executions(["RUNNING", "FAILED"]))
    with pytest.raises(TraceError, match="q2 FAILED: SYNTAX_ERROR"):
        failing.wait("q2")


def test_the_wait_is_bounded_and_stops_the_query() -> None:
    client = _Executions(["RUNNING"])
    reader, slept = _reader(client, timeout=20)
    with pytest.raises(TraceError, match="still RUNNING after 20 s: stopped"):
        reader.wait("q3")
    assert client.stopped == ["q3"]
    assert sum(slept) == 20


def test_scan_keeps_matching_lines_only_and_names_a_broken_object() -> None:
    lines = [
        {"event": "deferred", "id": "m-1", "rcpt": "Ann@Example.test", "at": "a"},
        {"event": "delivered", "id": "m-2", "rcpt": "bob@example.test", "at": "b",
         "meta": {"note": "ann@example.test is cc'd"}},  # the needle, not a match
        {"event": "delivered", "id": "m-1", "rcpt": "ANN@EXAMPLE.TEST", "at": "c",
         "response": {"text": "ok\u2028still this record"}},
    ]
    data = gzip.compress(b"\n".join(json.dumps(x, ensure_ascii=False).encode()
                                    for x in lines) + b"\n")
    target = Target.parse("ann@example.test")
    assert [r["at"] for r in scan(data, target, needle=target.needle())] == ["a", "c"]
    with pytest.raises(TraceError, match=r"events/x\.jsonl\.gz: not a gzip"):
        scan(b"plain", target, needle=target.needle(), key="events/x.jsonl.gz")


def test_verdicts_per_recipient() -> None:
    base = {"id": "m-1", "rcpt": "a@x.test"}
    deferred = [{**base, "event": "deferred", "at": f"2026-11-26T00:0{n}:00.000Z",
                 "attempt": n, "response": {"code": 451, "enhanced": "4.7.1", "text": "later"},
                 "next_attempt_at": f"2026-11-26T00:0{n + 1}:00.000Z"} for n in (1, 2)]
    (pending,) = recipients(deferred, [])
    assert pending.state == "deferred"
    assert pending.verdict() == ("still deferred, next attempt at 2026-11-26T00:03:00.000Z "
                                 "(attempt 2: 451 4.7.1 later)")
    suppressed = {**base, "rcpt": "S@x.test", "event": "suppressed", "attempt": 0,
                  "at": "2026-11-26T00:00:00.000Z", "reason": "on the suppression list: "
                  "hard_bounce in scope global since 2026-11-01T00:00:00Z"}
    claim = Claim(id="m-1", rcpt="c@x.test", event="delivered", at="2026-11-20T00:00:00.000Z",
                  batch="b1")
    by_rcpt = {r.rcpt: r for r in recipients([*deferred, suppressed], [claim])}
    assert by_rcpt["S@x.test"].verdict().startswith("suppressed: on the suppression list")
    assert by_rcpt["c@x.test"].state == "delivered"
    assert "claimed in the finals table" in by_rcpt["c@x.test"].verdict()
    complaint = {**base, "event": "complaint", "at": "2026-11-26T01:00:00.000Z", "attempt": 0,
                 "feedback_type": "abuse", "reporter": "yahoo.com"}
    delivered = {**base, "event": "delivered", "at": "2026-11-26T00:03:00.000Z", "attempt": 3,
                 "mx": "mx.x.test"}
    (done,) = recipients([complaint, delivered, *deferred, delivered], [])
    assert [e["event"] for e in done.events] == ["deferred", "deferred", "delivered",
                                                 "complaint"]
    assert done.verdict() == ("delivered at 2026-11-26T00:03:00.000Z (attempt 3, mx mx.x.test)"
                              "; then complaint at 2026-11-26T01:00:00.000Z: abuse from "
                              "yahoo.com")
    assert ordered([delivered, delivered]) == [delivered]
