"""Event records, contract v1, and the batch format on the events queue.

Producers never send one SQS request per event: records are packed into batches
(gzip'd JSON lines, base64 in the SQS body) that the export Lambda unpacks into S3
objects. Each batch carries a producer-chosen id, so re-sending a batch, or the
Lambda running twice on it, writes the same S3 keys and never duplicates a record.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, Unpack, get_args

from quiver.envelope import Envelope, Readable
from quiver.smtp.reply import Response
from quiver.speedups import b64encode_text, json_line

VERSION = 1
EventType = Literal[
    "delivered", "deferred", "bounced", "expired", "suppressed", "rejected", "failed",
    "async_bounce", "complaint", "unsubscribed", "control",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# One final event per recipient of an accepted message (ARCHITECTURE.md). `failed`:
# given up outside SMTP (a message that kept coming back to the queue unfinished).
FINAL_EVENTS: frozenset[EventType] = frozenset(
    {"delivered", "bounced", "expired", "suppressed", "rejected", "failed"}
)
# Zero or more per recipient, after its final event: what came back later (a DSN, an
# ARF complaint, an unsubscribe). They never change the one final event.
POST_DELIVERY_EVENTS: frozenset[EventType] = frozenset(
    {"async_bounce", "complaint", "unsubscribed"}
)
# Not about a recipient: an operator's change to the controls (`quiver ctl`): `id` is
# the control's id, `rcpt` and `from` are null, tenant/campaign/pool are the
# selector's (null when it names none), `attempt` 0; `action`, `actor`, `selector`,
# `reason` and `until` say what changed.
CONTROL_EVENTS: frozenset[EventType] = frozenset({"control"})
# SQS caps a message at 256 KiB; leave room for the JSON wrapper around the payload.
MAX_BATCH_BODY = 240 * 1024
MAX_BATCH_RECORDS = 5000
BATCH_FORMAT = "quiver-events-v1"


class Dsn(TypedDict):
    """What a delivery status notification said about one failed recipient."""

    # The recipient the report names (Final-Recipient): ours, or where ours forwarded.
    recipient: str
    status: str | None  # RFC 3463 enhanced status, e.g. "5.1.1"
    diagnostic_code: str | None  # the remote's reply as reported, e.g. "smtp; 550 5.1.1 ..."
    remote_mta: str | None
    reporting_mta: str | None
    format: str  # "rfc3464", or the text-bounce format recognised ("exim", "qmail", ...)


class Bounce(TypedDict):
    """How a refusal was classified (quiver/data/bounce_rules.toml)."""

    kind: str
    category: str
    reason: str


# The event record, contract v1: the one definition of its fields for the code.
# quiver/event_schema.py describes the same fields, in the same order, with their
# analyst-facing types (the Glue columns, docs/events.md and the DuckDB read are
# generated from it; a unit test holds the two together). Every producer builds
# records through these types and the export validates the common ones. At run time a
# record is a plain dict: typing it costs nothing.
# The common fields, on every event (functional form: `from` is a Python keyword).
CommonFields = TypedDict("CommonFields", {
    "v": int,
    "event": EventType,
    "at": str,  # RFC 3339 UTC, milliseconds
    "id": str,
    "rcpt": str | None,  # None only on a rejection whose body named no recipient
    "from": str | None,
    "tenant": str | None,
    "campaign": str | None,
    "pool": str | None,
    "meta": dict[str, Any],
    "attempt": int,  # real tries so far, this event's included; 0 if never tried
})


class EventFields(TypedDict, total=False):
    """The fields an event carries beyond the common ones, by what it records."""

    # A delivery attempt's path (one per connection: see Path.fields) and reply.
    source: str | None
    source_ip: str | None
    proxy: str | None
    mx: str | None
    mx_ip: str | None
    site: str | None
    provider: str | None
    response: Response | None
    tls: str | None
    # Added in v1, optional for readers: the TLS mode the connection used.
    tls_mode: str | None
    # Added in v1, optional for readers: the signed envelope sender (VERP) this
    # recipient's transaction used, when policy `return_path` rewrote it; `from`
    # stays the caller's.
    return_path: str
    next_attempt_at: str  # deferred only
    queued_ms: int
    # Bounces and complaints.
    bounce: Bounce
    feedback_type: str
    # Post-delivery events: the DSN behind an async_bounce; the trusted reporter
    # (its policy domain) behind a complaint; the raw inbound mail (s3://) either
    # came in, kept for the inbound bucket's expiry.
    dsn: Dsn
    reporter: str
    inbound_object: str
    # Why a message was rejected, failed or expired, and the queue message it was.
    # On a `control` event: the operator's reason.
    reason: str
    sqs_message_id: str
    # `control` events: pause, resume, bounce, cancel, stop or start; the caller's
    # identity (an IAM ARN, or user@host); the selector's named fields; when the
    # control lapses (RFC 3339; null: until lifted).
    action: str
    actor: str
    selector: dict[str, str]
    until: str | None
    # Added in v1, optional for readers: a `control` event whose actor is `adaptive`
    # (quiver.adaptive) names the rule that acted, the rate it observed (a share of
    # attempts, 0-1, or a rate per second, as the rule says), and the value it changed
    # (old and new: a send rate per second, a warm-up day, or null for a suspension).
    rule: str | None
    observed: float | None
    old: float | None
    new: float | None
    # Added in v1, optional for readers: on events of a try at the MX, what was sent
    # (bytes in DATA, the DKIM signature's d= and s=, the Message-ID header) and how
    # long its transaction took (MAIL FROM to its last reply; None: none took place).
    message_size: int
    dkim_domain: str | None
    dkim_selector: str | None
    message_id_header: str | None
    transaction_ms: int | None


class EventRecord(CommonFields, EventFields):
    """One event, contract v1."""


# Every field, in the record's order, and those every record must have.
EVENT_FIELDS: tuple[str, ...] = (*CommonFields.__annotations__, *EventFields.__annotations__)
_REQUIRED: tuple[str, ...] = tuple(CommonFields.__annotations__)
# A record as read back (unpacked, exported): the same schema.
Record = EventRecord


class EventBatchError(ValueError):
    """An events-queue message that is not a v1 batch."""


# Every event carries a timestamp; formatting a datetime costs more than the rest of
# the line, so the text up to the second is kept for the second it names.
_second_cache: tuple[int, str] = (-1, "")


def rfc3339_ms(epoch: float) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2026-11-26T10:00:00.123Z."""
    global _second_cache
    ms = int(epoch * 1000)
    second, millis = divmod(ms, 1000)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache = (second, prefix)
    return f"{prefix}{millis:03d}Z"


def make_event(
    event: EventType,
    *,
    envelope: Envelope,
    rcpt: str,
    attempt: int,
    pool: str | None,
    at: float | None = None,
    **fields: Unpack[EventFields],
) -> EventRecord:
    """A v1 record with the common fields filled from the envelope; `fields` adds the rest."""
    record: EventRecord = {
        "v": VERSION,
        "event": event,
        "at": rfc3339_ms(time.time() if at is None else at),
        "id": envelope.id,
        "rcpt": rcpt,
        "from": envelope.sender,
        "tenant": envelope.tenant,
        "campaign": envelope.campaign,
        "pool": pool,
        "meta": envelope.meta,
        "attempt": attempt,
        **fields,
    }
    return record


def rejected_events(
    readable: Readable, *, sqs_message_id: str, reason: str, at: float | None = None
) -> list[EventRecord]:
    """`rejected` records for a queue message that broke the contract: one per recipient
    that could be read from its body (one with `rcpt` null if none could).

    Each field the body still says validly is kept (the caller's id, recipients,
    tenant, campaign...), so the caller finds the rejection by what it sent; `id`
    falls back to the SQS message id only when the body has no valid id.
    """
    stamp = rfc3339_ms(time.time() if at is None else at)
    recipients: tuple[str | None, ...] = readable.recipients or (None,)
    return [
        {
            "v": VERSION,
            "event": "rejected",
            "at": stamp,
            "id": readable.id if readable.id is not None else sqs_message_id,
            "rcpt": rcpt,
            "from": readable.sender,
            "tenant": readable.tenant,
            "campaign": readable.campaign,
            "pool": readable.pool,
            "meta": readable.meta,
            "attempt": readable.attempt,
            "response": None,
            "reason": reason,
            "sqs_message_id": sqs_message_id,
        }
        for rcpt in recipients
    ]


def pack_batches(
    records: Iterable[Record], *, batch_id: str | None = None
) -> Iterator[tuple[str, str]]:
    """Pack records into (batch_id, sqs_body) pairs, each body under MAX_BATCH_BODY.

    `batch_id` None: each batch gets a random id. Given (letters and digits), each
    batch's id derives from it and the records' places in the sequence, so packing
    the same records again gives the same ids: the export then rewrites the same
    objects, and a producer that re-sends after a retry duplicates nothing."""
    if batch_id is not None and not batch_id.isalnum():
        raise ValueError(f"batch id {batch_id!r}: letters and digits only")
    lines: list[bytes] = []
    size = 0
    start = 0
    for record in records:
        line = json_line(record)
        # Compressed size is unknown until compressed; bound the raw size by a
        # conservative ratio, then check the real body and split if it is still big.
        if lines and (size + len(line) > MAX_BATCH_BODY * 3 or len(lines) >= MAX_BATCH_RECORDS):
            yield from _encode_split(lines, start, batch_id)
            start += len(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield from _encode_split(lines, start, batch_id)


def _batch_id(base: str | None, start: int, count: int) -> str:
    if base is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{base}:{start}:{count}".encode()).hexdigest()[:32]


def _encode_split(lines: list[bytes], start: int, base: str | None) -> Iterator[tuple[str, str]]:
    batch_id = _batch_id(base, start, len(lines))
    payload = b64encode_text(gzip.compress(b"".join(lines), compresslevel=5))
    head: dict[str, object] = {"format": BATCH_FORMAT, "batch": batch_id, "count": len(lines)}
    if base is not None:
        # Optional, so a reader that predates it ignores it: where the export looks for
        # the producer's confirmation (quiver.storage.finals).
        head["producer"] = base
    body = json.dumps({**head, "gz": payload}, separators=(",", ":"))
    if len(body) <= MAX_BATCH_BODY or len(lines) == 1:
        yield batch_id, body
        return
    half = len(lines) // 2
    yield from _encode_split(lines[:half], start, base)
    yield from _encode_split(lines[half:], start + half, base)


def unpack_batch(body: str) -> tuple[str, list[Record]]:
    """(batch_id, records) from an events-queue body; EventBatchError if it is not one."""
    batch_id, _, records = unpack_batch_from(body)
    return batch_id, records


def unpack_batch_from(body: str) -> tuple[str, str | None, list[Record]]:
    """(batch_id, producer, records) from an events-queue body: `producer` is the
    `batch_id` its producer packed it with (None: not given, or a batch written before
    the key existed)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:  # nested past the parser's limit
        raise EventBatchError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BATCH_FORMAT:
        raise EventBatchError(f"not a {BATCH_FORMAT} batch")
    batch_id, payload = data.get("batch"), data.get("gz")
    if not isinstance(batch_id, str) or not batch_id.isalnum() or not isinstance(payload, str):
        raise EventBatchError("batch id or payload missing")
    producer = data.get("producer")
    if producer is not None and not (isinstance(producer, str) and producer.isalnum()):
        raise EventBatchError("producer is not letters and digits")
    try:
        text = gzip.decompress(base64.b64decode(payload, validate=True)).decode("utf-8")
    # ValueError: bad base64 (binascii.Error), non-ASCII text, or bytes not UTF-8;
    # OSError: not gzip; EOFError: cut short; zlib.error: corrupt deflate data.
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise EventBatchError(f"payload is not base64 gzip'd UTF-8: {exc}") from None
    # Lines end with "\n" only: str.splitlines() would also split inside a record at
    # U+2028, U+2029 or U+0085, which JSON written with ensure_ascii=False keeps raw.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise EventBatchError(f"record {n} is not JSON: {exc}") from None
        validate_record(record, where=f"record {n}")
        records.append(record)
    return batch_id, producer, records


def validate_record(record: Any, *, where: str = "record") -> None:
    """Raise EventBatchError unless `record` has the v1 common fields."""
    if not isinstance(record, dict):
        raise EventBatchError(f"{where}: expected an object")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise EventBatchError(f"{where}: missing {', '.join(missing)}")
    if record["v"] != VERSION or record["event"] not in EVENT_TYPES:
        raise EventBatchError(f"{where}: not a v1 event ({record['v']!r}, {record['event']!r})")
    at = record["at"]
    if not isinstance(at, str) or not at.endswith("Z"):
        raise EventBatchError(f"{where}: 'at' must be RFC 3339 UTC")
    try:
        datetime.fromisoformat(at[:-1] + "+00:00")
    except ValueError:
        raise EventBatchError(f"{where}: 'at' must be RFC 3339 UTC") from None
