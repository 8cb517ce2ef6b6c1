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
from quiver.storage.sqs import chunk_messages


class SqsEventSink:
    """Publishes event records as gzip'd batches on the events queue."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        if not records:
            return
        await self._queue.send([Outgoing(body=body)
                                for _, body in pack_batches(records, batch_id=batch_id)])


class BotoEventSink:
    """Publishes event records on the events queue through a boto3 SQS client: for a
    function that sends a few events per invocation (the sender's lean client pays
    off only under load)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        # `batch_id` fixes the batches' ids, so a re-run (an intake given the same
        # object twice) publishes the same batches and the export rewrites the same
        # objects.
        messages = [Outgoing(body=body) for _, body in pack_batches(records, batch_id=batch_id)]
        for batch in chunk_messages(messages):
            response = await call(self._client.send_message_batch, QueueUrl=self.queue_url,
                                  Entries=[{"Id": str(i), "MessageBody": m.body}
                                           for i, m in enumerate(batch)])
            failed = response.get("Failed") or []
            if failed:
                raise StorageError(f"{self.queue_url}: {len(failed)} event batch(es) not "
                                   f"accepted: {failed[0].get('Message', failed[0])}")


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
