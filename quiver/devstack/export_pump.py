"""Runs the event export in-process on SQS-shaped events, as the Lambda does.

What AWS's event source mapping does: long-poll the events queue, hand the
function a batch in the Lambda SQS event shape, delete the records it did not
report as failed. The pump runs the Lambda's own record function
(`Exporter.export_record`) under the same Powertools batch processing, with an
Exporter of its own on this stack's clients. It also tallies records so the
demo can show progress.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from quiver.devstack import moto_server
from quiver.events import (
    FINAL_EVENTS,
    POST_DELIVERY_EVENTS,
    EventBatchError,
    Record,
    unpack_batch,
)
from quiver.export import Exporter
from quiver.settings import Deployment
from quiver.storage.dynamo import DynamoFinals

log = logging.getLogger("quiver.local")


@dataclass
class Tally:
    """Counts of exported records by (event type, recipient domain)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    finals: int = 0
    first_attempts: int = 0
    records: int = 0
    failed_batches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, records: list[Record]) -> None:
        with self.lock:
            for r in records:
                rcpt = r.get("rcpt") or ""
                domain = rcpt.rpartition("@")[2] if rcpt else "(undecodable)"
                self.counts[(r["event"], domain)] += 1
                self.records += 1
                if r["event"] in FINAL_EVENTS:
                    self.finals += 1
                if r.get("attempt", 0) <= 1 and r["event"] not in POST_DELIVERY_EVENTS:
                    # Each recipient has exactly one record of its first attempt
                    # (or a rejected/expired record at attempt 0).
                    self.first_attempts += 1


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


class ExportPump:
    def __init__(
        self, *, sqs: Any, deployment: Deployment, on_records: Tally, environ: dict[str, str]
    ) -> None:
        self._environ = environ
        self._sqs = sqs
        self._deployment = deployment
        self._tally = on_records
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="export-pump", daemon=True)
        # One processor per pump: a processor holds the state of the batch in hand.
        self._processor = BatchProcessor(event_type=EventType.SQS)
        self._exporter: Exporter | None = None

    def start(self) -> None:
        endpoint = self._environ["AWS_ENDPOINT_URL"]
        finals = (DynamoFinals(moto_server.client(endpoint, "dynamodb"),
                               self._deployment.finals_table)
                  if self._deployment.finals_table else None)
        self._exporter = Exporter(s3=moto_server.client(endpoint, "s3"),
                                  bucket=self._deployment.events_bucket, finals=finals)
        self._thread.start()

    def _invoke(self, event: dict[str, Any]) -> Any:
        """What Lambda does with the function: the Exporter's record function under
        Powertools' partial batch processing. No Lambda context: only the handler's
        logger reads one, and the record function does not."""
        assert self._exporter is not None, "start() the pump first"
        return process_partial_response(
            event=event, record_handler=self._exporter.export_record,
            processor=self._processor,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def drain_once(self, wait_seconds: int = 1) -> int:
        """One receive + handle + delete round; returns the number of queue messages."""
        url = self._deployment.events_queue_url
        response = self._sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=60,
        )
        messages = response.get("Messages", [])
        if not messages:
            return 0
        arn = f"arn:aws:sqs:{self._deployment.region}:123456789012:{url.rsplit('/', 1)[1]}"
        result = self._invoke(sqs_event(messages, queue_arn=arn, region=self._deployment.region))
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        for m in done:
            try:
                _, records = unpack_batch(m["Body"])
            except EventBatchError:
                continue
            self._tally.add(records)
        if failed:
            self._tally.failed_batches += len(failed)
        if done:
            self._sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
            ])
        return len(messages)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain_once()
            except Exception:
                log.exception("export pump round failed; retrying")
                self._stop.wait(1.0)
