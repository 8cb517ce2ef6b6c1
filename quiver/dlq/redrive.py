"""`quiver dlq redrive`: move dead-lettered messages back to their source queue.

Each message is sent to the source with its body and message attributes unchanged
(an outbound envelope keeps its id, its attempt count and its bookkeeping; an event
batch keeps its batch id, so the export writes the same objects), and deleted from
the DLQ only once the send succeeded. A failure between the two leaves a message in
both queues, never in neither; the result counts such copies.

The default count is the DLQ's depth when the redrive starts: a message that fails
again at once and comes back is not moved a second time by the same redrive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quiver.dlq.queues import DlqError, Pair, call
from quiver.dlq.show import release
from quiver.storage.base import COPY_ATTRIBUTE

_MARK = {COPY_ATTRIBUTE: {"DataType": "String", "StringValue": "redrive"}}
_MARK_BYTES = len(COPY_ATTRIBUTE) + len("String") + len("redrive")

# Each batch is sent and deleted well within this; a message whose send went through
# but whose delete comes later than this is redriven twice by a concurrent redrive.
REDRIVE_VISIBILITY = 120
# SendMessageBatch takes at most 10 entries and 256 KiB in all.
_BATCH_ENTRIES = 10
_BATCH_BYTES = 256 * 1024


@dataclass
class Moved:
    queue: str
    requested: int
    moved: int = 0
    # Sent to the source, but the DLQ copy could not be deleted: in both queues now.
    not_deleted: int = 0
    failed: list[str] = field(default_factory=list)  # what could not be sent, and why

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "requested": self.requested, "moved": self.moved,
                "not_deleted": self.not_deleted, "failed": self.failed}


def redrive(sqs: Any, pair: Pair, *, max_messages: int | None = None,
            progress: Callable[[Moved], None] = lambda moved: None) -> Moved:
    if max_messages is None:
        attributes = call(sqs.get_queue_attributes, QueueUrl=pair.dlq_url,
                          AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        max_messages = int(attributes.get("ApproximateNumberOfMessages", 0))
    if max_messages < 1:
        return Moved(queue=pair.name, requested=max_messages)
    result = Moved(queue=pair.name, requested=max_messages)
    while result.moved + result.not_deleted < max_messages and not result.failed:
        got = call(sqs.receive_message, QueueUrl=pair.dlq_url,
                   MaxNumberOfMessages=min(10, max_messages - result.moved - result.not_deleted),
                   VisibilityTimeout=REDRIVE_VISIBILITY, WaitTimeSeconds=1,
                   AttributeNames=["All"], MessageAttributeNames=["All"])
        messages = got.get("Messages", [])
        if not messages:
            break
        for batch in _batches(messages):
            _move(sqs, pair, batch, result)
        progress(result)
    return result


def _move(sqs: Any, pair: Pair, messages: list[dict[str, Any]], result: Moved) -> None:
    # Each is marked as quiver's copy: its final events may follow ones already exported
    # for the same recipients, so the export claims them (quiver.storage.finals).
    entries = [{"Id": str(n), "MessageBody": m["Body"],
                "MessageAttributes": {**sendable(m.get("MessageAttributes", {})), **_MARK}}
               for n, m in enumerate(messages)]
    try:
        sent = call(sqs.send_message_batch, QueueUrl=pair.source_url, Entries=entries)
    except DlqError as exc:
        # Nothing was deleted; make them visible again for the next try.
        release(sqs, pair.dlq_url, [m["ReceiptHandle"] for m in messages])
        result.failed.append(str(exc))
        return
    ok = {e["Id"] for e in sent.get("Successful", [])}
    for failure in sent.get("Failed", []):
        message = messages[int(failure["Id"])]
        result.failed.append(f"{message['MessageId']}: {failure.get('Code')}: "
                             f"{failure.get('Message', '')}")
    unsent = [m["ReceiptHandle"] for n, m in enumerate(messages) if str(n) not in ok]
    if unsent:
        release(sqs, pair.dlq_url, unsent)
    done = [(str(n), m["ReceiptHandle"]) for n, m in enumerate(messages) if str(n) in ok]
    if not done:
        return
    try:
        deleted = call(sqs.delete_message_batch, QueueUrl=pair.dlq_url, Entries=[
            {"Id": n, "ReceiptHandle": r} for n, r in done])
    except DlqError as exc:
        result.not_deleted += len(done)
        result.failed.append(f"sent, then not deleted from the DLQ: {exc}")
        return
    not_deleted = len(deleted.get("Failed", []))
    result.not_deleted += not_deleted
    result.moved += len(done) - not_deleted
    if not_deleted:
        result.failed.append(f"{not_deleted} sent, then not deleted from the DLQ: "
                             f"{deleted['Failed'][0].get('Message', '')}")


def sendable(attributes: dict[str, Any]) -> dict[str, Any]:
    """Received message attributes in the form SendMessage takes."""
    out = {}
    for name, value in attributes.items():
        kept = {k: value[k] for k in ("DataType", "StringValue", "BinaryValue") if k in value}
        out[name] = kept
    return out


def _batches(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups under SendMessageBatch's limits (a message alone always fits: it did once)."""
    out: list[list[dict[str, Any]]] = []
    size = 0
    for message in messages:
        length = _size(message)
        if not out or len(out[-1]) >= _BATCH_ENTRIES or size + length > _BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(message)
        size += length
    return out


def _size(message: dict[str, Any]) -> int:
    total = len(str(message.get("Body", "")).encode()) + _MARK_BYTES
    for name, value in message.get("MessageAttributes", {}).items():
        total += len(name.encode()) + len(str(value.get("DataType", "")).encode())
        total += len(str(value.get("StringValue", "")).encode()) + len(value.get("BinaryValue",
                                                                                 b""))
    return total
