"""Event batches: pack/unpack, size bounds, and deterministic export keys."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.envelope import Envelope, Readable
from quiver.event_schema import stored
from quiver.events import (
    BATCH_FORMAT,
    EVENT_TYPES,
    MAX_BATCH_BODY,
    EventBatchError,
    make_event,
    pack_batches,
    rejected_events,
    rfc3339_ms,
    unpack_batch,
    validate_record,
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


# --- properties: valid batches round-trip; malformed ones are refused, never crash --------

TEXT = st.text(max_size=40)  # any code point but surrogates: U+2028, U+0085, NUL...
SCALAR = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT
MOMENT = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)  # to 2100


@st.composite
def records(draw: st.DrawFn) -> dict:
    """Any v1 event record: the common fields, plus delivery fields or extra keys."""
    record = {
        "v": 1,
        "event": draw(st.sampled_from(EVENT_TYPES)),
        "at": rfc3339_ms(draw(MOMENT)),
        "id": draw(TEXT),
        "rcpt": draw(st.none() | TEXT),
        "from": draw(st.none() | TEXT),
        "tenant": draw(st.none() | TEXT),
        "campaign": draw(st.none() | TEXT),
        "pool": draw(st.none() | TEXT),
        "meta": draw(st.dictionaries(TEXT, SCALAR, max_size=4)),
        "attempt": draw(st.integers(0, 1000)),
    }
    if draw(st.booleans()):
        record["response"] = {"code": draw(st.integers(200, 599)),
                              "enhanced": draw(st.none() | TEXT), "text": draw(TEXT)}
    record.update(draw(st.dictionaries(TEXT.filter(lambda k: k not in record), SCALAR,
                                       max_size=3)))
    return record


@settings(max_examples=60)
@given(st.lists(records(), max_size=12))
def test_any_records_round_trip_through_batches(given_records: list[dict]) -> None:
    batches = list(pack_batches(given_records))
    out = []
    for batch_id, body in batches:
        assert len(body) <= MAX_BATCH_BODY
        got_id, got = unpack_batch(body)
        assert got_id == batch_id
        out.extend(got)
    assert out == given_records
    assert len({batch_id for batch_id, _ in batches}) == len(batches)


@settings(max_examples=60)
@given(st.lists(records(), max_size=12), st.text("abcdef0123456789", min_size=1, max_size=32))
def test_any_records_round_trip_through_export_objects(given_records: list[dict],
                                                       batch_id: str) -> None:
    objects = partition(batch_id, given_records)
    by_key: dict[str, list[dict]] = {key: read_object(data) for key, data in objects.items()}
    for key, got in by_key.items():
        # Each object holds exactly its partition's records, in their batch order, as
        # the table types them (`meta` values as strings).
        assert got == [stored(r) for r in given_records
                       if object_key(event=r["event"], at=r["at"], batch_id=batch_id) == key]
        assert key.endswith(f"/{batch_id}.jsonl.gz")
    assert sum(len(got) for got in by_key.values()) == len(given_records)
    assert partition(batch_id, given_records) == objects  # same bytes on a re-run


def batch_body(payload: object, *, batch: object = "b1") -> str:
    return json.dumps({"format": BATCH_FORMAT, "batch": batch, "count": 1, "gz": payload})


def gz64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data)).decode()


def refused_or_records(body: str) -> None:
    """unpack_batch refuses with EventBatchError, or returns only valid v1 records."""
    try:
        _, got = unpack_batch(body)
    except EventBatchError:
        return
    for record in got:
        validate_record(record)


@st.composite
def damaged_batches(draw: st.DrawFn) -> str:
    """A valid batch whose gzip'd payload has a few bytes changed or is cut short."""
    ((_, body),) = pack_batches([draw(records())])
    data = bytearray(base64.b64decode(json.loads(body)["gz"]))
    for _ in range(draw(st.integers(1, 3))):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(data)))
    return batch_body(base64.b64encode(bytes(data[:cut])).decode())


@settings(max_examples=200)
@given(st.one_of(
    damaged_batches(),
    st.text(max_size=300),  # not JSON, mostly
    st.text(max_size=100).map(batch_body),  # the right format, gz not base64
    st.binary(max_size=200).map(lambda b: batch_body(base64.b64encode(b).decode())),  # not gzip
    st.binary(max_size=200).map(lambda b: batch_body(gz64(b))),  # gzip'd bytes, not UTF-8 lines
    st.lists(st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(TEXT, inner, max_size=3)), max_size=5).map(
        lambda values: batch_body(gz64("\n".join(json.dumps(v) for v in values).encode()))),
    st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.none()).map(batch_body),
    st.text(max_size=20).map(lambda b: batch_body(gz64(b"{}"), batch=b)),  # batch ids
))
def test_malformed_batches_are_refused_never_crash(body: str) -> None:
    refused_or_records(body)


@pytest.mark.parametrize(("corrupt", "why"), [
    (lambda r: r.pop("rcpt"), "missing rcpt"),
    (lambda r: r.update(v=2), "not a v1 event"),
    (lambda r: r.update(event="opened"), "not a v1 event"),
    (lambda r: r.update(at="2026-13-01T00:00:00.000Z"), "'at' must be RFC 3339 UTC"),
    (lambda r: r.update(at="2026-01-01T00:00:00.000"), "'at' must be RFC 3339 UTC"),
    (lambda r: r.update(at=1790000000), "'at' must be RFC 3339 UTC"),
])
@settings(max_examples=15)
@given(batch=st.lists(records(), min_size=1, max_size=5), data=st.data())
def test_one_corrupt_record_refuses_the_batch_and_names_it(corrupt, why, batch, data) -> None:
    n = data.draw(st.integers(0, len(batch) - 1))
    corrupt(batch[n])
    ((_, body),) = pack_batches(batch)
    with pytest.raises(EventBatchError, match=f"record {n + 1}: {why}"):
        unpack_batch(body)


@pytest.mark.parametrize("body", [
    "[" * 100_000,  # nested past the JSON parser's recursion limit
    batch_body(gz64(b"[" * 100_000)),
    batch_body(gz64(b'{"v": 1}\n' + b"{" * 100_000)),
])
def test_deeply_nested_json_is_refused_not_a_crash(body: str) -> None:
    with pytest.raises(EventBatchError):
        unpack_batch(body)


def test_a_record_with_a_line_separator_in_its_text_round_trips() -> None:
    record = event(text="one\u2028two\u2029three\x85four\x1cfive")
    ((_, body),) = pack_batches([record])
    assert unpack_batch(body)[1] == [record]


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
