"""The hourly compaction (quiver.analytics.compaction) on moto's server over real HTTP:
a closed hour's raw objects, written by the export's own code, become a few Parquet
parts holding the same records; running it again changes nothing, two runs at once
leave one set of parts, and a batch that lands late is compacted into the hour."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from quiver.analytics.columns import event_columns
from quiver.analytics.compaction import GRACE, Compactor, read_records
from quiver.analytics.layout import COMPACTED_PREFIX, MANIFEST_PREFIX, RAW_PREFIX, Partition
from quiver.devstack import moto_server
from quiver.events import rfc3339_ms
from quiver.export import write_batch

pytestmark = pytest.mark.integration

HOUR = datetime(2026, 12, 5, 9, tzinfo=UTC)
AFTER_CLOSE = HOUR + timedelta(hours=1) + GRACE + timedelta(minutes=1)
BATCHES = 12
PER_BATCH = 25


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = moto_server.start_moto(log_dir=tmp_path_factory.mktemp("moto"))
    try:
        yield moto_server.client(server.endpoint, "s3")
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"events-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def record(event: str, n: int, *, minute: int) -> dict[str, Any]:
    """A v1 record as producers make them, with the shapes every column has: a meta of
    mixed value types, nested structs, a field that is not a column (tls_mode)."""
    at = rfc3339_ms((HOUR + timedelta(minutes=minute, seconds=n % 60)).timestamp()
                    + (n % 1000) / 1000)
    base: dict[str, Any] = {
        "v": 1, "event": event, "at": at, "id": f"msg-{n:05d}", "rcpt": f"user{n}@alpha.test",
        "from": "bounces@news.test", "tenant": "acme" if n % 3 else None,
        "campaign": f"c{n % 4}", "pool": "shared",
        "meta": {"n": n, "vip": n % 2 == 0, "note": "x", "empty": None},
        "attempt": 1 + n % 2,
    }
    if event == "rejected":
        return {**base, "attempt": 0, "reason": f"to[0]: invalid address {n}",
                "sqs_message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, str(n)))}
    base.update({
        "source": "local1", "source_ip": "127.0.0.2", "proxy": None, "mx": "mx.alpha.test",
        "mx_ip": "127.0.0.9", "site": "alpha", "provider": None if n % 5 == 0 else "quiver-local",
        "response": {"code": 250 if event == "delivered" else 550, "enhanced": "2.0.0",
                     "text": f"ok {n}"},
        "tls": "TLSv1.3", "tls_mode": "opportunistic", "queued_ms": 1000 + n,
    })
    if event == "bounced":
        base["bounce"] = {"kind": "hard", "category": "bad-mailbox", "reason": "user unknown"}
    return base


def write_raw(s3: Any, bucket: str, *, batches: int = BATCHES, first: int = 0) -> int:
    """`batches` export batches into HOUR, each with three event types; the records."""
    total = 0
    for b in range(first, first + batches):
        records = [record(("delivered", "bounced", "rejected")[i % 3], b * 1000 + i,
                          minute=(b * 7 + i) % 60) for i in range(PER_BATCH)]
        write_batch(s3, bucket=bucket, batch_id=f"batch-{b:04d}", records=records)
        total += len(records)
    return total


def listing(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"])
    return out


def as_text(value: Any) -> str | None:
    """A JSON value as the table's map<string,string> holds it."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def projected(raw: dict[str, Any]) -> str:
    """A raw record as its table row: the columns only, meta values as text."""
    row = {name: raw.get(name) for name, _ in event_columns()}
    row["meta"] = {k: as_text(v) for k, v in raw["meta"].items()}
    return json.dumps(row, sort_keys=True)


def raw_rows(s3: Any, bucket: str) -> Counter[str]:
    rows: Counter[str] = Counter()
    for key in listing(s3, bucket, f"{RAW_PREFIX}/"):
        for r in read_records(s3.get_object(Bucket=bucket, Key=key)["Body"].read()):
            rows[projected(r)] += 1
    return rows


def compacted_rows(s3: Any, bucket: str, tmp: Path) -> Counter[str]:
    rows: Counter[str] = Counter()
    for n, key in enumerate(listing(s3, bucket, f"{COMPACTED_PREFIX}/")):
        path = tmp / f"{n}.parquet"
        path.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        cursor = duckdb.connect().execute(f"SELECT * FROM read_parquet('{path}')")
        names = [d[0] for d in cursor.description]
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            rows[json.dumps(row, sort_keys=True)] += 1
    return rows


def compactor(s3: Any, bucket: str, **kwargs: Any) -> Compactor:
    # Parts of ~4 KB of raw input, so an hour of this test has several.
    return Compactor(s3=s3, bucket=bucket, columns=event_columns(),
                     part_input_bytes=4096, **kwargs)


def test_a_closed_hour_becomes_a_few_parquet_parts_with_the_same_records(
        s3: Any, bucket: str, tmp_path: Path) -> None:
    written = write_raw(s3, bucket)
    raw_before = listing(s3, bucket, f"{RAW_PREFIX}/")
    assert len(raw_before) == BATCHES * 3  # a batch writes one object per event type

    result = compactor(s3, bucket).run(now=AFTER_CLOSE, lookback_hours=2)

    assert not result.failed and not result.deferred
    done = {h.partition.event: h for h in result.hours if h.outcome == "compacted"}
    assert set(done) == {"delivered", "bounced", "rejected"}
    assert all(h.inputs == BATCHES for h in done.values())
    assert sum(h.records for h in done.values()) == written
    parts = listing(s3, bucket, f"{COMPACTED_PREFIX}/")
    assert 3 < len(parts) < len(raw_before)
    assert all(k.endswith(".parquet") and "/date=2026-12-05/hour=09/" in k for k in parts)
    # The same records, as a multiset, and the raw landing zone untouched.
    assert compacted_rows(s3, bucket, tmp_path) == raw_rows(s3, bucket)
    assert sum(raw_rows(s3, bucket).values()) == written
    assert listing(s3, bucket, f"{RAW_PREFIX}/") == raw_before
    manifests = listing(s3, bucket, f"{MANIFEST_PREFIX}/")
    assert len(manifests) == 3
    manifest = json.loads(s3.get_object(
        Bucket=bucket, Key=Partition("bounced", "2026-12-05", "09").manifest_key)["Body"].read())
    assert manifest["records"] == BATCHES * sum(1 for i in range(PER_BATCH) if i % 3 == 1)
    assert {p[0] for p in manifest["parts"]} == {
        k for k in parts if "/event=bounced/" in k}


def test_an_open_hour_is_left_alone(s3: Any, bucket: str) -> None:
    write_raw(s3, bucket, batches=2)
    before_grace = HOUR + timedelta(hours=1) + GRACE - timedelta(seconds=1)
    result = compactor(s3, bucket).run(now=before_grace, lookback_hours=3)
    assert [h for h in result.hours if h.outcome != "empty"] == []
    assert listing(s3, bucket, f"{COMPACTED_PREFIX}/") == {}


def test_running_again_changes_nothing(s3: Any, bucket: str) -> None:
    write_raw(s3, bucket, batches=4)
    compactor(s3, bucket).run(now=AFTER_CLOSE, lookback_hours=2)
    parts = listing(s3, bucket, f"{COMPACTED_PREFIX}/")
    manifests = listing(s3, bucket, f"{MANIFEST_PREFIX}/")

    again = compactor(s3, bucket).run(now=AFTER_CLOSE + timedelta(hours=1), lookback_hours=3)

    assert {h.outcome for h in again.hours} <= {"unchanged", "empty"}
    assert sum(h.outcome == "unchanged" for h in again.hours) == 3
    # Not rewritten: the same keys with the same ETags.
    assert listing(s3, bucket, f"{COMPACTED_PREFIX}/") == parts
    assert listing(s3, bucket, f"{MANIFEST_PREFIX}/") == manifests


def test_two_runs_at_once_leave_one_set_of_parts(
        s3: Any, bucket: str, tmp_path: Path) -> None:
    write_raw(s3, bucket, batches=6)
    partition = Partition("delivered", "2026-12-05", "09")
    start = threading.Barrier(2)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=30)
            outcomes.append(compactor(s3, bucket).compact(partition).outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    # One run recorded the hour; the other found it recorded (same plan) or lost the
    # conditional write; either way one manifest names every part there is.
    assert "compacted" in outcomes and len(outcomes) == 2
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=partition.manifest_key)["Body"].read())
    assert set(listing(s3, bucket, partition.compacted_prefix)) == {p[0] for p in manifest["parts"]}
    compacted = compacted_rows(s3, bucket, tmp_path)
    # This test's delivered records are the ones answered 250.
    delivered = Counter({k: n for k, n in raw_rows(s3, bucket).items()
                         if (json.loads(k)["response"] or {}).get("code") == 250})
    assert compacted == delivered
    assert max(compacted.values()) == 1


def test_a_late_batch_is_compacted_into_its_hour(s3: Any, bucket: str, tmp_path: Path) -> None:
    write_raw(s3, bucket, batches=3)
    compactor(s3, bucket).run(now=AFTER_CLOSE, lookback_hours=2)
    old_parts = set(listing(s3, bucket, f"{COMPACTED_PREFIX}/"))

    write_raw(s3, bucket, batches=1, first=50)  # lands after the first compaction
    result = compactor(s3, bucket).run(now=AFTER_CLOSE + timedelta(hours=2), lookback_hours=4)

    assert sum(h.outcome == "compacted" for h in result.hours) == 3
    new_parts = set(listing(s3, bucket, f"{COMPACTED_PREFIX}/"))
    assert not new_parts & old_parts  # the earlier plan's parts are gone
    assert compacted_rows(s3, bucket, tmp_path) == raw_rows(s3, bucket)


def test_a_raw_object_that_does_not_parse_fails_its_hour_only(s3: Any, bucket: str) -> None:
    write_raw(s3, bucket, batches=2)
    s3.put_object(Bucket=bucket, Key=f"{RAW_PREFIX}/event=bounced/date=2026-12-05/hour=09/"
                  "broken.jsonl.gz", Body=io.BytesIO(b"not gzip").read())
    result = compactor(s3, bucket).run(now=AFTER_CLOSE, lookback_hours=2)
    assert [p.event for p, _ in result.failed] == ["bounced"]
    assert sorted(h.partition.event for h in result.hours if h.outcome == "compacted") == [
        "delivered", "rejected"]
    assert not listing(s3, bucket, Partition("bounced", "2026-12-05", "09").compacted_prefix)
