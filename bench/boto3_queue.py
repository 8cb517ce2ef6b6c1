"""The boto3 SQS queue the sender used before its lean client: the baseline that
bench/sqs_calls.py measures `quiver.storage.sqs_lean.LeanSqsQueue` against.

It implements the same `Queue` contract (batching, retry of failed entries,
StorageError semantics), through boto3 on the AWS thread pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from quiver.storage.base import Outgoing, Received, StorageError
from quiver.storage.boto_calls import call as _call
from quiver.storage.sqs import SQS_BATCH, chunk_messages

_RETRIES = 3


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
