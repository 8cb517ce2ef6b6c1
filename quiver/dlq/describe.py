"""What a dead-lettered message is and why it is there."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from quiver import envelope as envelope_mod
from quiver.dlq.queues import QueueName
from quiver.events import EventBatchError, unpack_batch

# Set by the sender on what it dead-letters itself (quiver.sender.lifecycle: a
# rejected message, or one given up at the receive limit).
REASON_ATTRIBUTE = "quiver-reason"
MESSAGE_ID_ATTRIBUTE = "quiver-message-id"
# Ids listed per event batch; a batch holds up to thousands of records.
MAX_IDS_SHOWN = 5


def describe(queue: QueueName, message: dict[str, Any]) -> dict[str, Any]:
    """A summary of one received DLQ message (AttributeNames and MessageAttributeNames
    All): SQS's facts, what its body says, and why it was dead-lettered."""
    system = message.get("Attributes", {})
    attributes = message.get("MessageAttributes", {})
    sent = int(system.get("SentTimestamp", 0)) / 1000
    out: dict[str, Any] = {
        "sqs_message_id": message.get("MessageId"),
        "sent_at": datetime.fromtimestamp(sent, tz=UTC).isoformat(timespec="seconds")
        if sent else None,
        "sent_timestamp": sent or None,
        "receive_count": int(system.get("ApproximateReceiveCount", 0)),
        "body_bytes": len(str(message.get("Body", "")).encode()),
    }
    reason = attributes.get(REASON_ATTRIBUTE, {}).get("StringValue")
    if MESSAGE_ID_ATTRIBUTE in attributes:
        out["original_sqs_message_id"] = attributes[MESSAGE_ID_ATTRIBUTE].get("StringValue")
    body = str(message.get("Body", ""))
    if queue == "outbound":
        out.update(_outbound(body))
        out["reason"] = reason or ("moved by SQS after the outbound queue's maxReceiveCount "
                                   "receives; no reason recorded (the sender did not give it "
                                   "up itself)")
    else:
        batch = _batch(body)
        out.update(batch)
        out["reason"] = reason or (
            f"not a v1 event batch: {batch['error']}" if "error" in batch else
            "moved by SQS after the events queue's maxReceiveCount receives: the export "
            "failed on it each time (see the export Lambda's logs)")
    return out


def _outbound(body: str) -> dict[str, Any]:
    readable = envelope_mod.readable(body)
    out: dict[str, Any] = {"id": readable.id, "recipients": list(readable.recipients),
                           "attempt": readable.attempt, "tenant": readable.tenant}
    try:
        envelope_mod.decode(body)
    except envelope_mod.EnvelopeError as exc:
        out["invalid"] = str(exc)
    return out


def _batch(body: str) -> dict[str, Any]:
    try:
        batch_id, records = unpack_batch(body)
    except EventBatchError as exc:
        return {"error": str(exc)}
    ids = list(dict.fromkeys(str(r["id"]) for r in records))
    return {"batch": batch_id, "records": len(records),
            "events": dict(Counter(str(r["event"]) for r in records)),
            "ids": ids[:MAX_IDS_SHOWN], "more_ids": max(0, len(ids) - MAX_IDS_SHOWN)}
