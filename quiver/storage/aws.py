"""AWS implementations: the events queue as an event sink, S3 bodies, Secrets Manager.

Every boto3 call goes through `quiver.storage.boto_calls`, which runs it off the
event loop and turns its errors into StorageError. The DynamoDB stores are in
`dynamo.py`; the sender's SQS client is `sqs_lean.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from quiver.envelope import EnvelopeError, parse_s3_uri
from quiver.events import Record, pack_batches
from quiver.storage.base import MissingObject, Outgoing, Queue, StorageError, TooLarge
from quiver.storage.boto_calls import aws_executor, call, call_sync, error_code


class SqsEventSink:
    """Publishes event records as gzip'd batches on the events queue."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        if not records:
            return
        await self._queue.send([Outgoing(body=body)
                                for _, body in pack_batches(records, batch_id=batch_id)])


# SendMessageBatch takes at most 10 entries.
_SEND_BATCH = 10


class BotoEventSink:
    """The events queue as an event sink through boto3, for Lambdas: a few batches per
    invocation do not pay for the sender's lean SQS client and its connection pool."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        bodies = [body for _, body in pack_batches(records, batch_id=batch_id)]
        for start in range(0, len(bodies), _SEND_BATCH):
            entries = [{"Id": str(i), "MessageBody": body}
                       for i, body in enumerate(bodies[start:start + _SEND_BATCH])]
            response = await call(self._client.send_message_batch, QueueUrl=self.queue_url,
                                  Entries=entries)
            failed = response.get("Failed") or []
            if failed:
                first = failed[0]
                raise StorageError(f"{self.queue_url}: {len(failed)} event batch(es) not "
                                   f"accepted: {first.get('Code')}: {first.get('Message')}")


class S3BodyStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def put(self, key: str, data: bytes) -> str:
        await call(self._client.put_object, Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    async def get(self, uri: str, *, max_size: int) -> bytes:
        try:
            bucket, key = parse_s3_uri(uri)
        except EnvelopeError as exc:
            raise StorageError(str(exc)) from None
        try:
            response = await call(self._client.get_object, Bucket=bucket, Key=key)
        except StorageError as exc:
            if error_code(exc) in ("NoSuchKey", "NoSuchBucket", "404"):
                raise MissingObject(f"{uri}: no such object") from None
            raise
        size = response.get("ContentLength", 0)
        if size > max_size:
            response["Body"].close()
            raise TooLarge(uri, size, max_size)
        loop = asyncio.get_running_loop()
        data: bytes = await loop.run_in_executor(aws_executor(), response["Body"].read)
        return data


def secret_reader(session: Any) -> Callable[[str], bytes]:
    """Secrets Manager reads (secret id -> its bytes), for keys kept as secrets (DKIM)."""
    client = session.client("secretsmanager")

    def read(secret_id: str) -> bytes:
        value = call_sync(client.get_secret_value, SecretId=secret_id)
        text = value.get("SecretString")
        return text.encode() if text is not None else bytes(value["SecretBinary"])

    return read
