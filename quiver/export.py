"""Event export: unpack event batches into partitioned, gzip'd JSONL objects in S3.

Object keys derive only from the batch id and each record's type and hour, so
running the export twice on one batch overwrites the same objects with the same
bytes (gzip mtime fixed at 0) and never duplicates a record.

`Exporter` is the export Lambda's work on one events-queue message; the Lambda
(functions/event_export) and the local stack's pump each build one with their
own clients and hand `export_record` to Powertools' batch processing.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from quiver.events import Record, unpack_batch
from quiver.settings import Deployment
from quiver.storage.base import FinalsStore
from quiver.storage.dynamo import DynamoFinals

_log = logging.getLogger("quiver.export")

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


class SqsMessage(Protocol):
    """What the export reads of an SQS record (Powertools' SQSRecord has it)."""

    @property
    def body(self) -> str: ...


class ExportLog(Protocol):
    """The logging the export does: a `logging.Logger` or Powertools' `Logger`."""

    def info(self, msg: str, *, extra: dict[str, object]) -> None: ...

    def debug(self, msg: str, *, extra: dict[str, object]) -> None: ...


class Exporter:
    """Exports events-queue messages to `bucket`, final events claimed in `finals`
    (None: final events are at-least-once across sender crashes)."""

    def __init__(
        self, *, s3: Any, bucket: str, finals: FinalsStore | None,
        log: ExportLog = _log,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._finals = finals
        self._log = log

    @classmethod
    def from_deployment(cls, deployment: Deployment, *, session: Any,
                        log: ExportLog = _log) -> Exporter:
        finals = (DynamoFinals(session.client("dynamodb"), deployment.finals_table)
                  if deployment.finals_table else None)
        return cls(s3=session.client("s3"), bucket=deployment.events_bucket, finals=finals,
                   log=log)

    def export_record(self, record: SqsMessage) -> list[str]:
        """Export one event batch; returns the keys written. Raises on a batch that is
        not a v1 event batch or on a store failure, so only this record is retried."""
        batch_id, records = unpack_batch(record.body)
        if self._finals is not None:
            # Final events are exactly-once: a copy from a re-delivered message is dropped.
            kept = self._finals.claim(batch_id, records)
            if len(kept) != len(records):
                self._log.info("dropped duplicate final events",
                               extra={"batch": batch_id, "dropped": len(records) - len(kept)})
            records = kept
        keys = write_batch(self._s3, bucket=self.bucket, batch_id=batch_id, records=records)
        self._log.debug("exported batch", extra={"batch": batch_id, "records": len(records)})
        return keys
