"""The S3 event notifications the intake queues carry: which objects SES wrote.

An SQS message body is one notification: `{"Records": [{"eventSource": "aws:s3",
"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object":
{"key": <URL-encoded>, "size": ...}}}]}`. S3 also sends an `s3:TestEvent` when a
notification is configured; it names no object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

# A notification holds one record today; a body naming more than this is not S3's.
MAX_RECORDS = 100


class InboundEventError(ValueError):
    """An intake-queue message that is not an S3 event notification."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    bucket: str
    key: str


def object_refs(body: str) -> list[ObjectRef]:
    """The objects an S3 notification names ([] for a test event); InboundEventError
    saying what is wrong with anything else."""
    try:
        data: Any = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InboundEventError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InboundEventError("expected an S3 event notification object")
    if data.get("Event") == "s3:TestEvent":
        return []
    records = data.get("Records")
    if not isinstance(records, list) or not records or len(records) > MAX_RECORDS:
        raise InboundEventError("expected 'Records': a list of 1-100 S3 event records")
    refs = []
    for i, record in enumerate(records):
        where = f"Records[{i}]"
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            raise InboundEventError(f"{where}: not an aws:s3 event record")
        name = record.get("eventName")
        if not isinstance(name, str) or not name.startswith("ObjectCreated:"):
            raise InboundEventError(f"{where}: eventName {name!r}; expected ObjectCreated:*")
        s3 = record.get("s3")
        bucket = s3.get("bucket", {}).get("name") if isinstance(s3, dict) else None
        key = s3.get("object", {}).get("key") if isinstance(s3, dict) else None
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise InboundEventError(f"{where}: s3.bucket.name or s3.object.key missing")
        # S3 writes keys URL-encoded, spaces as '+'.
        refs.append(ObjectRef(bucket=bucket, key=unquote_plus(key)))
    return refs
