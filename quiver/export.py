"""Event export: unpack event batches into partitioned, gzip'd JSONL objects in S3.

Object keys derive only from the batch id and each record's type and hour, so
running the export twice on one batch overwrites the same objects with the same
bytes (gzip mtime fixed at 0) and never duplicates a record.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from quiver.events import Record

PREFIX = "events"


def object_key(*, event: str, at: str, batch_id: str) -> str:
    """events/event=<type>/date=YYYY-MM-DD/hour=HH/<batch>.jsonl.gz for a record's `at`."""
    date, hour = at[:10], at[11:13]
    return f"{PREFIX}/event={event}/date={date}/hour={hour}/{batch_id}.jsonl.gz"


def partition(batch_id: str, records: Sequence[Record]) -> dict[str, bytes]:
    """Group a batch's records by partition: {object key: gzip'd JSONL bytes}."""
    groups: dict[str, list[bytes]] = defaultdict(list)
    for record in records:
        key = object_key(event=record["event"], at=record["at"], batch_id=batch_id)
        groups[key].append(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())
    return {
        key: gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)
        for key, lines in groups.items()
    }


def write_batch(s3: Any, *, bucket: str, batch_id: str, records: Sequence[Record]) -> list[str]:
    """Write one batch's objects (synchronously, for Lambda); returns the keys written."""
    objects = partition(batch_id, records)
    for key, data in objects.items():
        s3.put_object(
            Bucket=bucket, Key=key, Body=data,
            ContentType="application/x-ndjson", ContentEncoding="gzip",
        )
    return sorted(objects)


def read_object(data: bytes) -> list[Record]:
    """Parse an exported object back into records (for tests, tools and analysts)."""
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]
