"""AWS implementations: SQS queues, the events queue as an event sink, S3 bodies.

boto3 is synchronous; calls run on a small thread pool so the event loop keeps
serving SMTP connections while an SQS request is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from quiver.envelope import EnvelopeError, parse_s3_uri
from quiver.events import Record, pack_batches
from quiver.storage.base import (
    MissingObject,
    Outgoing,
    Queue,
    Received,
    StorageError,
    TooLarge,
)

T = TypeVar("T")
SQS_BATCH = 10
# SendMessageBatch also caps the whole request at 256 KiB.
SQS_BATCH_BYTES = 250 * 1024
_RETRIES = 3

_default_executor: ThreadPoolExecutor | None = None


def aws_executor() -> ThreadPoolExecutor:
    global _default_executor
    if _default_executor is None:
        _default_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aws")
    return _default_executor


async def _call(fn: Callable[..., T], **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(aws_executor(), lambda: fn(**kwargs))
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"{getattr(fn, '__name__', 'call')}: {exc}") from exc


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def chunk_messages(messages: Sequence[Outgoing]) -> list[list[Outgoing]]:
    """Split into SendMessageBatch requests: ≤ 10 entries and ≤ SQS_BATCH_BYTES each.

    Attribute names and values count towards SQS's size limit, so they count here.
    """
    chunks: list[list[Outgoing]] = []
    current: list[Outgoing] = []
    size = 0
    for message in messages:
        n = _size(message.body) + sum(
            _size(k) + _size(v) + 6 for k, v in message.attributes.items()
        )
        if current and (len(current) == SQS_BATCH or size + n > SQS_BATCH_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(message)
        size += n
    if current:
        chunks.append(current)
    return chunks


class SqsQueue:
    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    async def receive(
        self, *, max_messages: int, wait_seconds: int, visibility: int
    ) -> list[Received]:
        response = await _call(
            self._client.receive_message,
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(SQS_BATCH, max_messages)),
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        out = []
        for m in response.get("Messages", []):
            attrs = m.get("Attributes", {})
            out.append(Received(
                body=m["Body"],
                receipt=m["ReceiptHandle"],
                message_id=m["MessageId"],
                receive_count=int(attrs.get("ApproximateReceiveCount", 1)),
                sent_at=int(attrs.get("SentTimestamp", 0)) / 1000.0,
            ))
        return out

    async def delete(self, receipts: Sequence[str]) -> None:
        await self._batch(
            self._client.delete_message_batch,
            [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)],
        )

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        await self._batch(
            self._client.change_message_visibility_batch,
            [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": seconds}
             for i, r in enumerate(receipts)],
        )

    async def send(self, messages: Sequence[Outgoing]) -> None:
        for chunk in chunk_messages(messages):
            entries = []
            for i, m in enumerate(chunk):
                entry: dict[str, Any] = {"Id": str(i), "MessageBody": m.body}
                if m.delay_seconds:
                    entry["DelaySeconds"] = min(900, m.delay_seconds)
                if m.attributes:
                    entry["MessageAttributes"] = {
                        k: {"DataType": "String", "StringValue": v} for k, v in m.attributes.items()
                    }
                entries.append(entry)
            await self._send_entries(entries)

    async def _send_entries(self, entries: list[dict[str, Any]]) -> None:
        await self._retrying(self._client.send_message_batch, entries)

    async def _batch(self, fn: Callable[..., Any], entries: list[dict[str, Any]]) -> None:
        # Every chunk is tried: one stale receipt handle must not leave the messages
        # of the next chunks undeleted or invisible.
        errors = []
        for start in range(0, len(entries), SQS_BATCH):
            try:
                await self._retrying(fn, entries[start:start + SQS_BATCH])
            except StorageError as exc:
                errors.append(str(exc))
        if errors:
            raise StorageError("; ".join(errors))

    async def _retrying(self, fn: Callable[..., Any], entries: list[dict[str, Any]]) -> None:
        pending = entries
        for attempt in range(_RETRIES):
            response = await _call(fn, QueueUrl=self.url, Entries=pending)
            failed = {f["Id"]: f for f in response.get("Failed", [])}
            if not failed:
                return
            # Sender faults (bad receipt handle, invalid body) will not heal on retry.
            fatal = [f for f in failed.values() if f.get("SenderFault")]
            if fatal:
                code, text = fatal[0].get("Code"), fatal[0].get("Message")
                raise StorageError(f"{fn.__name__}: {code}: {text}")
            pending = [e for e in pending if e["Id"] in failed]
            await asyncio.sleep(0.1 * 2**attempt)
        raise StorageError(f"{fn.__name__}: {len(pending)} entries failed after {_RETRIES} tries")


class SqsEventSink:
    """Publishes event records as gzip'd batches on the events queue."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        await self._queue.send([Outgoing(body=body) for _, body in pack_batches(records)])


class S3BodyStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def put(self, key: str, data: bytes) -> str:
        await _call(self._client.put_object, Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    async def get(self, uri: str, *, max_size: int) -> bytes:
        try:
            bucket, key = parse_s3_uri(uri)
        except EnvelopeError as exc:
            raise StorageError(str(exc)) from None
        try:
            response = await _call(self._client.get_object, Bucket=bucket, Key=key)
        except StorageError as exc:
            cause = exc.__cause__
            code = cause.response.get("Error", {}).get("Code") if isinstance(
                cause, ClientError) else None
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise MissingObject(f"{uri}: no such object") from None
            raise
        size = response.get("ContentLength", 0)
        if size > max_size:
            response["Body"].close()
            raise TooLarge(uri, size, max_size)
        loop = asyncio.get_running_loop()
        data: bytes = await loop.run_in_executor(aws_executor(), response["Body"].read)
        return data
