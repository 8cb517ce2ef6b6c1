"""What an SQS event source mapping does for a Lambda function, in-process.

Long-poll the queue, hand the function's record handler a batch in the Lambda SQS
event shape under Powertools' partial batch processing (as the handlers in
functions/ run it), and delete the records it did not report as failed; those become
visible again and, past the queue's maxReceiveCount, move to its DLQ, as in AWS.
The local stack runs the export and the intakes this way on moto's server.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from quiver.devstack import moto_server

log = logging.getLogger("quiver.local")

# A record handler as Powertools calls it (it gets an SQSRecord).
RecordHandler = Callable[[Any], object]


def sqs_event(messages: list[dict[str, Any]], *, queue_arn: str, region: str) -> dict[str, Any]:
    return {"Records": [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(m["Body"].encode(), usedforsecurity=False).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        }
        for m in messages
    ]}


class LambdaPump:
    """Feeds one queue to one record handler on a daemon thread (or `drain_once`)."""

    def __init__(self, *, sqs: Any, queue_url: str, region: str, name: str,
                 record_handler: RecordHandler, visibility_timeout: int = 60) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self._region = region
        self._record_handler = record_handler
        self._visibility = visibility_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # One processor per pump: a processor holds the state of the batch in hand.
        self._processor = BatchProcessor(event_type=EventType.SQS)
        self.failed_records = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _invoke(self, event: dict[str, Any]) -> Any:
        """What Lambda does with the function. No Lambda context: only the handlers'
        loggers read one, and the record handlers do not."""
        return process_partial_response(event=event, record_handler=self._record_handler,
                                        processor=self._processor)

    def after_batch(self, done: list[dict[str, Any]]) -> None:
        """Called with the messages handled without failure, before they are deleted."""

    def drain_once(self, wait_seconds: int = 1) -> int:
        """One receive + handle + delete round; returns the number of queue messages."""
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self._visibility,
        )
        messages = response.get("Messages", [])
        if not messages:
            return 0
        arn = (f"arn:aws:sqs:{self._region}:{moto_server.ACCOUNT}:"
               f"{self.queue_url.rsplit('/', 1)[1]}")
        result = self._invoke(sqs_event(messages, queue_arn=arn, region=self._region))
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        self.failed_records += len(failed)
        self.after_batch(done)
        if done:
            self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
            ])
        return len(messages)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain_once()
            except Exception:
                log.exception("%s round failed; retrying", self._thread.name)
                self._stop.wait(1.0)
