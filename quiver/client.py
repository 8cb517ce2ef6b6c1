"""Client for services that enqueue rendered messages.

    client = QuiverClient.from_settings(deployment)
    client.enqueue(OutboundMessage(id="order-42", sender="noreply@shop.example",
                                   to=["ann@example.com"], raw=rendered_bytes))

Every message is validated against contract v1 and the content rules the sender
applies (quiver.content: size, header section, long lines) before it leaves the
process, so a bad message is an exception here rather than a `rejected` event
later; a message over `max_message_size` is refused before anything of it is read
or uploaded. The client has no policy file: a deployment whose policy changes
`content.max_message_size` or `content.long_lines` gives its clients the same
values. A body whose base64 text would pass the spill threshold (default 200 KiB,
about 150 KiB of message) goes to the spill bucket and travels as `raw_s3`: SQS
caps a whole queue message at 256 KiB, and base64 makes a body a third larger.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from quiver import envelope as envelope_mod
from quiver.content import DEFAULT_MAX_MESSAGE_SIZE, ContentError, LongLines, prepare
from quiver.storage.sqs import chunk, wire_size

DEFAULT_SPILL_THRESHOLD = 200 * 1024


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    id: str
    sender: str
    to: Sequence[str]
    raw: bytes
    pool: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    expires: str | None = None  # RFC 3339


@dataclass(slots=True)
class BatchResult:
    accepted: dict[str, str] = field(default_factory=dict)  # caller id → SQS message id
    failed: dict[str, str] = field(default_factory=dict)  # caller id → reason


class QuiverClient:
    def __init__(
        self,
        *,
        sqs: Any,
        s3: Any,
        queue_url: str,
        spill_bucket: str,
        spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        long_lines: LongLines = "reencode",
    ) -> None:
        self._sqs = sqs
        self._s3 = s3
        self.queue_url = queue_url
        self.spill_bucket = spill_bucket
        self.spill_threshold = spill_threshold
        # The sender's policy `[content]` values (these are its defaults).
        self.max_message_size = max_message_size
        self.long_lines: LongLines = long_lines

    @classmethod
    def from_settings(
        cls, deployment: Any, *, session: Any = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, long_lines: LongLines = "reencode",
    ) -> QuiverClient:
        import boto3

        session = session or boto3.session.Session(region_name=deployment.region)
        return cls(
            sqs=session.client("sqs"),
            s3=session.client("s3"),
            queue_url=deployment.outbound_queue_url,
            spill_bucket=deployment.spill_bucket,
            max_message_size=max_message_size,
            long_lines=long_lines,
        )

    def build(self, message: OutboundMessage) -> str:
        """Validate and encode one message (spilling its body if large); the SQS body."""
        try:
            # The size first: a message over the limit is not read, let alone uploaded.
            prepare(message.raw, max_size=self.max_message_size, long_lines=self.long_lines)
        except ContentError as exc:
            raise envelope_mod.EnvelopeError("raw", str(exc)) from None
        data: dict[str, Any] = {"v": 1, "id": message.id, "from": message.sender,
                                "to": list(message.to)}
        for key in ("pool", "tenant", "campaign", "expires"):
            if (value := getattr(message, key)) is not None:
                data[key] = value
        if message.meta:
            data["meta"] = message.meta
        # Compared as it travels: base64 is 4 characters per 3 bytes, and the rest of
        # the message (recipients, meta) fits in what the threshold leaves of SQS's 256 KiB.
        spill = 4 * -(-len(message.raw) // 3) > self.spill_threshold
        if spill:
            # Validate every other field before uploading anything: an invalid
            # message must not leave an orphaned body in the bucket.
            data["raw_s3"] = f"s3://{self.spill_bucket}/pending"
        else:
            data["raw"] = base64.b64encode(message.raw).decode("ascii")
        env = envelope_mod.from_dict(data, allow_reserved=False)
        if spill:
            env = replace(env, raw_s3=self._spill(message), raw=None)
        return envelope_mod.encode(env)

    def _spill(self, message: OutboundMessage) -> str:
        digest = hashlib.sha256(message.raw).hexdigest()[:16]
        key = time.strftime("spill/%Y/%m/%d/", time.gmtime()) + f"{message.id}-{digest}.eml"
        self._s3.put_object(Bucket=self.spill_bucket, Key=key, Body=message.raw)
        return f"s3://{self.spill_bucket}/{key}"

    def enqueue(self, message: OutboundMessage) -> str:
        """Enqueue one message; returns the SQS message id. Raises EnvelopeError if invalid."""
        body = self.build(message)
        response = self._sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
        return str(response["MessageId"])

    def enqueue_batch(self, messages: Sequence[OutboundMessage]) -> BatchResult:
        """Enqueue many with SendMessageBatch; invalid or refused messages are reported."""
        result = BatchResult()
        entries: list[tuple[str, str]] = []
        for message in messages:
            try:
                entries.append((message.id, self.build(message)))
            except envelope_mod.EnvelopeError as exc:
                result.failed[message.id] = str(exc)
        sent = self.send_built(entries)
        result.accepted.update(sent.accepted)
        result.failed.update(sent.failed)
        return result

    def send_built(self, entries: Sequence[tuple[str, str]]) -> BatchResult:
        """Send (caller id, SQS body from `build`) pairs with SendMessageBatch."""
        result = BatchResult()
        for batch in chunk(list(entries), lambda entry: wire_size(entry[1])):
            self._send_batch(batch, result)
        return result

    def _send_batch(self, batch: list[tuple[str, str]], result: BatchResult) -> None:
        response = self._sqs.send_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(batch)],
        )
        for ok in response.get("Successful", []):
            result.accepted[batch[int(ok["Id"])][0]] = ok["MessageId"]
        for bad in response.get("Failed", []):
            result.failed[batch[int(bad["Id"])][0]] = f"{bad.get('Code')}: {bad.get('Message')}"
