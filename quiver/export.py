"""Event export: unpack event batches into partitioned, gzip'd JSONL objects in S3.

Object keys derive only from the batch id and each record's type and hour, so
running the export twice on one batch overwrites the same objects with the same
bytes (gzip mtime fixed at 0) and never duplicates a record.

`Exporter` is the export Lambda's work on one events-queue message; the Lambda
(functions/event_export) and the local stack's pump each build one with their
own clients and hand `export_record` to Powertools' batch processing.

Every event passes here, so the tenant guards (quiver.guards) count each batch here
too, after its objects are written, and record the pauses they put in force as
`control` events written straight to the bucket (not through the queue this drains).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import logging
import sys
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from quiver.adaptive.change import ChangeRecorder
from quiver.event_schema import stored
from quiver.events import Record, unpack_batch_from
from quiver.guards.guard import Guard
from quiver.guards.policy_reader import GuardsPolicyReader
from quiver.guards.store import DynamoGuardStore
from quiver.policy.source import policy_reader
from quiver.settings import Deployment
from quiver.storage.base import FinalsStore, StorageError
from quiver.storage.boto_calls import call_sync
from quiver.storage.dynamo import DynamoFinals

_log = logging.getLogger("quiver.export")

PREFIX = "events"
# The objects are gzip files, and say so: with `Content-Encoding: gzip` browsers,
# `requests`, curl --compressed and console downloads would undo the gzip and save
# plain text under a `.jsonl.gz` name. `application/gzip` (RFC 6713) names the bytes as
# stored, so every HTTP client keeps them; Athena and DuckDB go by the `.gz` extension.
CONTENT_TYPE = "application/gzip"


def object_key(*, event: str, at: str, batch_id: str) -> str:
    """events/event=<type>/date=YYYY-MM-DD/hour=HH/<batch>.jsonl.gz for a record's `at`."""
    date, hour = at[:10], at[11:13]
    return f"{PREFIX}/event={event}/date={date}/hour={hour}/{batch_id}.jsonl.gz"


def partition(batch_id: str, records: Sequence[Record]) -> dict[str, bytes]:
    """Group a batch's records by partition: {object key: gzip'd JSONL bytes}, each
    record as the table types it (`meta` values as strings: event_schema.stored)."""
    groups: dict[str, list[bytes]] = defaultdict(list)
    for record in records:
        key = object_key(event=record["event"], at=record["at"], batch_id=batch_id)
        groups[key].append(
            json.dumps(stored(record), separators=(",", ":"), ensure_ascii=False).encode())
    return {
        key: gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0)
        for key, lines in groups.items()
    }


def write_batch(s3: Any, *, bucket: str, batch_id: str, records: Sequence[Record]) -> list[str]:
    """Write one batch's objects (synchronously, for Lambda); returns the keys written."""
    objects = partition(batch_id, records)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=CONTENT_TYPE)
    return sorted(objects)


def read_object(data: bytes) -> list[Record]:
    """Parse an exported object back into records (for tests, tools and analysts)."""
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]


class BucketEvents:
    """An `EventSink` that writes records straight to the events bucket, as the export
    writes a batch: for the events the export itself makes (the guards' pauses)."""

    def __init__(self, s3: Any, *, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        call_sync(functools.partial(write_batch, self._s3, bucket=self.bucket,
                                    batch_id=batch_id or uuid.uuid4().hex, records=records))


class SqsMessage(Protocol):
    """What the export reads of an SQS record (Powertools' SQSRecord has it)."""

    @property
    def body(self) -> str: ...


class ExportLog(Protocol):
    """The logging the export does: a `logging.Logger` or Powertools' `Logger`."""

    def info(self, msg: str, *, extra: dict[str, object]) -> None: ...

    def debug(self, msg: str, *, extra: dict[str, object]) -> None: ...

    def error(self, msg: str, *, extra: dict[str, object]) -> None: ...


class Exporter:
    """Exports events-queue messages to `bucket`, final events claimed in `finals`
    (None: final events are at-least-once across sender crashes), each batch counted
    by `guard` (None: no tenant guards). EMF lines go to `metrics_out`."""

    def __init__(
        self, *, s3: Any, bucket: str, finals: FinalsStore | None,
        log: ExportLog = _log, guard: Guard | None = None,
        metrics_out: TextIO | None = None,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._finals = finals
        self._log = log
        self._guard = guard
        self._changes = ChangeRecorder(BucketEvents(s3, bucket=bucket),
                                       metrics_out=metrics_out)

    @classmethod
    def from_deployment(cls, deployment: Deployment, *, session: Any,
                        log: ExportLog = _log) -> Exporter:
        dynamodb = session.client("dynamodb")
        finals = (DynamoFinals(dynamodb, deployment.finals_table)
                  if deployment.finals_table else None)
        s3 = session.client("s3")
        return cls(s3=s3, bucket=deployment.events_bucket, finals=finals, log=log,
                   guard=guards_of(deployment, dynamodb=dynamodb, s3=s3,
                                   ssm=lambda: session.client("ssm")),
                   metrics_out=sys.stdout)

    def export_record(self, record: SqsMessage) -> list[str]:
        """Export one event batch; returns the keys written. Raises on a batch that is
        not a v1 event batch or on a store failure, so only this record is retried."""
        batch_id, producer, records = unpack_batch_from(record.body)
        if self._finals is not None:
            # Final events are exactly-once: a copy from a re-delivered message is dropped
            # (claims only where a copy can exist: quiver.storage.finals).
            kept = self._finals.claim(batch_id, records, producer=producer)
            if len(kept) != len(records):
                self._log.info("dropped duplicate final events",
                               extra={"batch": batch_id, "dropped": len(records) - len(kept)})
            records = kept
        keys = write_batch(self._s3, bucket=self.bucket, batch_id=batch_id, records=records)
        self._log.debug("exported batch", extra={"batch": batch_id, "records": len(records)})
        if self._guard is not None:
            self._guarded(self._guard, batch_id, records)
        return keys

    def _guarded(self, guard: Guard, batch_id: str, records: Sequence[Record]) -> None:
        """Count the batch in the guards and record the pauses it caused. A table
        failure is logged and the batch stays exported: the events are the record,
        the guards a safeguard over them, and a retry would only write them again."""
        try:
            changes = guard.observe(batch_id, records)
        except StorageError as exc:
            self._log.error("guards: batch not counted", extra={"batch": batch_id,
                                                               "error": str(exc)})
            return
        if changes:
            asyncio.run(self._changes.record(changes))


def guards_of(deployment: Deployment, *, dynamodb: Any, s3: Any, ssm: Any) -> Guard | None:
    """The guard of a deployment that names its controls table and its policy (the CDK
    app sets both on the export function; without either, no guards), its pauses'
    EMF on stdout (where Lambda's logs take EMF)."""
    if not deployment.controls_table or not deployment.policy_source:
        return None
    spec = deployment.policy_source
    policy = GuardsPolicyReader(policy_reader(spec, s3=lambda: s3, ssm=ssm), origin=spec)
    return Guard(DynamoGuardStore(dynamodb, deployment.controls_table), policy=policy,
                 metrics_out=sys.stdout)
