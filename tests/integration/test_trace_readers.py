"""The trace's readers against moto's server over HTTP.

S3: the listing stays within the window's date and hour partitions (objects outside
it are never read). Athena: the query goes out with its execution parameters, the
wait polls through QUEUED and RUNNING, a query past the timeout is stopped, and the
rows come back parsed. Moto runs no SQL: its Athena returns the rows it was given
(`/moto-api/static/athena/query-results`), so these tests prove the calls and the
parsing, not the query's meaning (tests/unit/test_trace_query.py checks its text)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from quiver.devstack.moto_server import MotoServer, client, create_resources, start_moto
from quiver.export import object_key, partition
from quiver.settings import Deployment
from quiver.trace.athena import SELECT, AthenaEventReader, build_query
from quiver.trace.s3_reader import S3EventReader
from quiver.trace.target import Target, TraceError, Window

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("trace-readers"))
    try:
        yield server, create_resources(server.endpoint)
    finally:
        server.stop()


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.removesuffix("Z") + "+00:00").timestamp()


def event(kind: str, at: str, rcpt: str, attempt: int) -> dict[str, Any]:
    return {"v": 1, "event": kind, "at": at, "id": f"m-{rcpt[0]}", "rcpt": rcpt,
            "from": "b@x.test", "tenant": None, "campaign": None, "pool": "p", "meta": {},
            "attempt": attempt}


def test_s3_reads_only_the_windows_partitions(moto: tuple[MotoServer, Deployment]) -> None:
    server, deployment = moto
    s3 = client(server.endpoint, "s3")
    records = [
        event("deferred", "2026-11-25T21:59:59.999Z", "ann@x.test", 1),  # an hour before
        event("deferred", "2026-11-25T22:10:00.000Z", "ann@x.test", 2),  # its hour, earlier
        event("deferred", "2026-11-25T22:40:00.000Z", "Ann@X.test", 3),
        event("delivered", "2026-11-26T01:05:00.000Z", "ann@x.test", 4),
        event("delivered", "2026-11-26T01:05:00.000Z", "bob@x.test", 1),
        event("bounced", "2026-11-26T02:00:00.000Z", "ann@x.test", 5),  # an hour after
    ]
    for key, data in partition("b1", records).items():
        s3.put_object(Bucket=deployment.events_bucket, Key=key, Body=data)
    s3.put_object(Bucket=deployment.events_bucket, Body=b"not gzip",
                  Key=object_key(event="deferred", at="2026-11-24T22:40:00.000Z", batch_id="x"))
    window = Window(start=epoch("2026-11-25T22:30:00Z"), end=epoch("2026-11-26T01:10:00Z"))
    reader = S3EventReader(s3, bucket=deployment.events_bucket)
    assert sorted(reader.keys(window)) == [
        "events/event=deferred/date=2026-11-25/hour=22/b1.jsonl.gz",
        "events/event=delivered/date=2026-11-26/hour=01/b1.jsonl.gz",
    ]
    found = reader.read(Target.parse("ANN@x.test"), window)
    assert sorted((r["event"], r["attempt"]) for r in found) == [("deferred", 3),
                                                                 ("delivered", 4)]
    assert "2 objects" in reader.describe()
    few = S3EventReader(s3, bucket=deployment.events_bucket, max_objects=1)
    with pytest.raises(TraceError, match="--athena"):
        few.read(Target.parse("ann@x.test"), window)


def _moto_api(server: MotoServer, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{server.endpoint}/moto-api/{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201)


@pytest.fixture
def athena(moto: tuple[MotoServer, Deployment]) -> Iterator[Any]:
    server, _ = moto
    athena = client(server.endpoint, "athena")
    if "quiver" not in {w["Name"] for w in athena.list_work_groups()["WorkGroups"]}:
        athena.create_work_group(Name="quiver", Configuration={"ResultConfiguration": {
            "OutputLocation": "s3://results/athena/"}})
    yield athena
    _moto_api(server, "state-manager/unset-transition", {"model_name": "athena::execution"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_athena_query_runs_with_parameters_and_its_rows_parse(
        moto: tuple[MotoServer, Deployment], athena: Any) -> None:
    server, _ = moto
    # QUEUED, then RUNNING for two polls, then SUCCEEDED.
    _moto_api(server, "state-manager/set-transition", {
        "model_name": "athena::execution", "transition": {"progression": "manual", "times": 2}})
    names = [alias for _, alias in SELECT]
    values = {"event": "delivered", "at": "2026-11-26T00:05:00.000Z", "id": "m-1",
              "rcpt": "Ann@x.test", "attempt": "3", "response_code": "250",
              "response_enhanced": "2.0.0", "response_text": "OK queued"}
    _moto_api(server, "static/athena/query-results", {"results": [{
        "rows": [{"Data": [{"VarCharValue": n} for n in names]},
                 {"Data": [{"VarCharValue": values[n]} if n in values else {} for n in names]}],
        "column_info": [{"Name": n, "Label": n, "Type": "varchar"} for n in names],
    }]})
    clock = Clock()
    reader = AthenaEventReader(athena, workgroup="quiver", database="quiver_events",
                               clock=clock, sleep=clock.sleep)
    target = Target.parse("ann@x.test")
    window = Window(start=epoch("2026-11-25T22:30:00Z"), end=epoch("2026-11-26T01:10:00Z"))
    (record,) = reader.read(target, window)
    assert record["event"] == "delivered" and record["attempt"] == 3
    assert record["response"] == {"code": 250, "enhanced": "2.0.0", "text": "OK queued"}
    assert len(clock.slept) >= 1  # it waited on RUNNING
    query, parameters = build_query(target, window, database="quiver_events")
    executions = [athena.get_query_execution(QueryExecutionId=e)["QueryExecution"]
                  for e in athena.list_query_executions(WorkGroup="quiver")["QueryExecutionIds"]]
    (execution,) = [e for e in executions if e["Query"] == query]
    assert execution["ExecutionParameters"] == parameters
    assert execution["QueryExecutionContext"]["Database"] == "quiver_events"


def test_athena_query_past_the_timeout_is_stopped(
        moto: tuple[MotoServer, Deployment], athena: Any) -> None:
    server, _ = moto
    _moto_api(server, "state-manager/set-transition", {
        "model_name": "athena::execution",
        "transition": {"progression": "manual", "times": 1000}})
    clock = Clock()
    reader = AthenaEventReader(athena, workgroup="quiver", database="quiver_events",
                               timeout=10, clock=clock, sleep=clock.sleep)
    window = Window(start=epoch("2026-11-25T22:30:00Z"), end=epoch("2026-11-26T01:10:00Z"))
    with pytest.raises(TraceError, match="after 10 s: stopped") as caught:
        reader.read(Target.parse("m-9"), window)
    query_id = str(caught.value).split()[2]
    state = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
    assert state["State"] == "CANCELLED"


class _Session:
    """What run_trace asks of a boto3 session, on moto's server."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        return client(self.endpoint, service)


def test_claims_give_a_verdict_past_the_window_and_a_missing_table_is_a_note(
        moto: tuple[MotoServer, Deployment]) -> None:
    from dataclasses import replace

    from quiver.storage.dynamo import DynamoFinals
    from quiver.trace.command import run_trace

    server, deployment = moto
    old = {**event("delivered", "2026-11-01T10:00:00.000Z", "carl@x.test", 1), "id": "m-old"}
    DynamoFinals(client(server.endpoint, "dynamodb"), deployment.finals_table).claim("b0", [old])
    window = Window(start=epoch("2026-11-25T22:30:00Z"), end=epoch("2026-11-26T01:10:00Z"))
    s3 = S3EventReader(client(server.endpoint, "s3"), bucket=deployment.events_bucket)
    session = _Session(server.endpoint)
    trace = run_trace(Target.parse("m-old"), window, reader=s3, deployment=deployment,
                      session=session)
    (recipient,) = trace.recipients
    assert (recipient.rcpt, recipient.state) == ("carl@x.test", "delivered")
    assert recipient.verdict() == ("delivered at 2026-11-01T10:00:00.000Z (claimed in the "
                                   "finals table; its event is not in the window: widen "
                                   "--since)")
    lost = run_trace(Target.parse("m-old"), window, reader=s3, session=session,
                     deployment=replace(deployment, finals_table="no-such-table"))
    assert lost.recipients == []
    assert [n for n in lost.notes if n.startswith("final claims not read: finals table "
                                                  "no-such-table")]
