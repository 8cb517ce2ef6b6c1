"""The export path with tenant guards: a batch that crosses a threshold is exported,
pauses its tenant, and its pause is recorded as a `control` event (actor adaptive)
in the bucket and as EMF; a table failure leaves the export done; the policy reader
keeps the last good `[guards]` and starts with none."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from quiver.envelope import Envelope
from quiver.events import make_event, pack_batches, validate_record
from quiver.export import Exporter, read_object
from quiver.guards.guard import Guard
from quiver.guards.policy_reader import GuardsPolicyReader
from quiver.guards.store import MemoryGuardStore
from quiver.policy.guards import GuardLimits, GuardsPolicy
from quiver.policy.load import PolicyError
from quiver.storage.base import StorageError

AT = 1_790_000_000.0


class RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body

    def records(self) -> list[dict[str, Any]]:
        return [r for data in self.objects.values() for r in read_object(data)]


class Message:
    def __init__(self, body: str) -> None:
        self.body = body


def events(tenant: str, *, delivered: int, complaints: int) -> list[Any]:
    out = []
    for i in range(delivered + complaints):
        env = Envelope(id=f"{tenant}-{i}", sender="a@example.com",
                       recipients=(f"r{i}@example.org",), raw=b"x", tenant=tenant)
        if i < delivered:
            out.append(make_event("delivered", envelope=env, rcpt=f"r{i}@example.org",
                                  attempt=1, pool="p", at=AT))
        else:
            out.append(make_event("complaint", envelope=env, rcpt=f"r{i}@example.org",
                                  attempt=1, pool="p", at=AT, feedback_type="abuse"))
    return out


def exporter(store: Any, s3: RecordingS3, metrics: io.StringIO) -> Exporter:
    policy = GuardsPolicy(defaults=GuardLimits(min_volume=50))
    guard = Guard(store, policy=lambda: policy, clock=lambda: AT + 1, metrics_out=metrics)
    return Exporter(s3=s3, bucket="events", finals=None, guard=guard, metrics_out=metrics)


def test_a_crossing_batch_pauses_its_tenant_and_records_why() -> None:
    s3, store, metrics = RecordingS3(), MemoryGuardStore(), io.StringIO()
    export = exporter(store, s3, metrics)
    for records in (events("quiet", delivered=60, complaints=0),
                    events("loud", delivered=60, complaints=1)):
        for _, body in pack_batches(records):
            export.export_record(Message(body))
    [control] = store.controls.values()
    assert control.selector.named() == {"tenant": "loud"} and control.who == "adaptive"
    [event] = [r for r in s3.records() if r["event"] == "control"]
    validate_record(event)
    assert (event["actor"], event["action"], event["rule"], event["tenant"], event["id"]) == (
        "adaptive", "suspend", "guard-complaint-rate", "loud", control.id)
    assert event["observed"] == pytest.approx(1 / 60)
    assert event["reason"] == "complaint rate 1.67 % (1 of 60) over 24h ≥ 0.3 %"
    names = [m["Name"] for line in metrics.getvalue().splitlines()
             for m in json.loads(line)["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert sorted(names) == ["adaptive_changes", "guard_pauses"]
    assert len([r for r in s3.records() if r["event"] != "control"]) == 121


class FailingStore(MemoryGuardStore):
    def add(self, *args: Any, **kwargs: Any) -> bool:
        raise StorageError("transact_write_items: throttled")


def test_a_table_failure_is_logged_and_the_batch_stays_exported(
        caplog: pytest.LogCaptureFixture) -> None:
    s3 = RecordingS3()
    export = exporter(FailingStore(), s3, io.StringIO())
    [(_, body)] = pack_batches(events("t", delivered=3, complaints=0))
    with caplog.at_level(logging.ERROR, logger="quiver.export"):
        assert export.export_record(Message(body))
    assert len(s3.records()) == 3
    assert any("guards: batch not counted" in r.message for r in caplog.records)


def test_the_reader_keeps_the_last_good_section(caplog: pytest.LogCaptureFixture) -> None:
    base = 'default_pool = "p"\n[sources.s]\nip = "192.0.2.1"\nehlo = "o.example.com"\n' \
           '[pools.p]\nsources = ["s"]\n'
    texts = [base + "[guards]\nmin_volume = 7\n", base + "[guards]\nmin_volume = 0\n"]
    now = [0.0]

    def read() -> str:
        if not texts:
            raise PolicyError(["cannot read: gone"], "ssm:p")
        return texts[0]

    reader = GuardsPolicyReader(read, origin="ssm:p", interval=60, clock=lambda: now[0])
    first = reader()
    assert first is not None and first.defaults.min_volume == 7
    texts.pop(0)
    now[0] = 30.0
    assert reader() is first  # not re-read before the interval
    now[0] = 61.0
    with caplog.at_level(logging.ERROR, logger="quiver.guards"):
        assert reader() is first
    assert "guards.min_volume: expected an integer" in caplog.text
    texts.clear()
    now[0] = 200.0
    assert reader() is first
    broken = GuardsPolicyReader(lambda: "default_pool = 7", origin="x")
    assert broken() is None  # never loaded: guards off, the export goes on
