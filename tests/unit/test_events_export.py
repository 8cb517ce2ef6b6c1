"""Event batches: pack/unpack, size bounds, and deterministic export keys."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.envelope import Envelope, Readable
from quiver.events import (
    MAX_BATCH_BODY,
    EventBatchError,
    make_event,
    pack_batches,
    rejected_events,
    unpack_batch,
)
from quiver.export import object_key, partition, read_object

ENV = Envelope(id="m-1", sender="a@example.com", recipients=("b@example.org",), raw=b"x",
               campaign="c", meta={"k": "v"})


def event(kind: str = "delivered", at: float = 1_790_000_000.0, **extra) -> dict:
    return make_event(kind, envelope=ENV, rcpt="b@example.org", attempt=1, pool="p", at=at,
                      **extra)


def test_record_has_v1_common_fields() -> None:
    r = event(source="s1", source_ip="192.0.2.1")
    for key in ("v", "event", "at", "id", "rcpt", "from", "tenant", "campaign", "pool", "meta",
                "attempt"):
        assert key in r
    assert r["at"].endswith("Z") and len(r["at"]) == len("2026-09-21T13:33:20.000Z")


def test_pack_unpack_round_trip_and_split() -> None:
    records = [event(text="x" * 200 + str(i)) for i in range(20000)]
    batches = list(pack_batches(records))
    assert len(batches) > 1
    out = []
    for batch_id, body in batches:
        assert len(body) <= MAX_BATCH_BODY
        got_id, got = unpack_batch(body)
        assert got_id == batch_id
        out.extend(got)
    assert out == records


def test_incompressible_records_still_fit() -> None:
    import os

    records = [event(noise=os.urandom(3000).hex()) for _ in range(400)]
    batches = list(pack_batches(records))
    assert all(len(body) <= MAX_BATCH_BODY for _, body in batches)
    assert sum(len(unpack_batch(b)[1]) for _, b in batches) == 400


@pytest.mark.parametrize("body", [
    "not json", "[]", '{"format":"other"}',
    '{"format":"quiver-events-v1","batch":"ab","gz":"%%%"}',
    '{"format":"quiver-events-v1","batch":"../x","gz":""}',
])
def test_bad_batches_are_refused(body: str) -> None:
    with pytest.raises(EventBatchError):
        unpack_batch(body)


def test_batch_with_a_non_v1_record_is_refused() -> None:
    (_, body), = pack_batches([{"v": 9, "event": "delivered"}])
    with pytest.raises(EventBatchError, match="missing"):
        unpack_batch(body)


@settings(max_examples=100)
@given(st.text(max_size=300))
def test_unpack_never_crashes(body: str) -> None:
    with contextlib.suppress(EventBatchError):
        unpack_batch(body)


def test_partition_keys_are_deterministic_and_hourly() -> None:
    records = [event("delivered", at=1_790_000_000.0), event("bounced", at=1_790_000_000.0),
               event("delivered", at=1_790_003_700.0),
               *rejected_events(Readable(), sqs_message_id="x", reason="r", at=1_790_000_000.0)]
    a = partition("batch1", records)
    b = partition("batch1", records)
    assert a == b  # same bytes: a re-run overwrites with identical objects
    assert set(a) == {
        "events/event=delivered/date=2026-09-21/hour=14/batch1.jsonl.gz",
        "events/event=delivered/date=2026-09-21/hour=15/batch1.jsonl.gz",
        "events/event=bounced/date=2026-09-21/hour=14/batch1.jsonl.gz",
        "events/event=rejected/date=2026-09-21/hour=14/batch1.jsonl.gz",
    }
    assert sum(len(read_object(v)) for v in a.values()) == 4
    assert object_key(event="expired", at="2026-01-02T03:04:05.000Z", batch_id="z") == (
        "events/event=expired/date=2026-01-02/hour=03/z.jsonl.gz")


def test_export_rerun_creates_no_duplicates() -> None:
    class FakeS3:
        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}

        def put_object(self, *, Bucket, Key, Body, **_):
            self.objects[Key] = Body

    from quiver.export import write_batch

    s3 = FakeS3()
    records = [event(), event("deferred")]
    write_batch(s3, bucket="b", batch_id="b1", records=records)
    write_batch(s3, bucket="b", batch_id="b1", records=records)
    all_records = [r for data in s3.objects.values() for r in read_object(data)]
    assert sorted(json.dumps(r, sort_keys=True) for r in all_records) == sorted(
        json.dumps(r, sort_keys=True) for r in records)
