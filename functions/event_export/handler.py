"""Event export Lambda: events-queue batches → partitioned JSONL objects in S3.

Thin by design: it parses the SQS trigger, calls `quiver.export`, and reports the
records that failed so SQS retries only those (partial batch responses). A batch
that is not a v1 event batch fails on its own and ends in the events DLQ after
its retries; it never blocks the others.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from quiver.events import unpack_batch
from quiver.export import write_batch
from quiver.settings import ENV_EVENTS_BUCKET, ENV_FINALS_TABLE
from quiver.storage.dynamo import DynamoFinals

logger = Logger(service="quiver-event-export")
processor = BatchProcessor(event_type=EventType.SQS)
_s3: Any = None
_finals: DynamoFinals | None = None


def _client() -> Any:
    global _s3
    if _s3 is None:
        _s3 = boto3.client("s3")
    return _s3


def _finals_table() -> DynamoFinals | None:
    global _finals
    table = os.environ.get(ENV_FINALS_TABLE)
    if table and (_finals is None or _finals.table != table):
        _finals = DynamoFinals(boto3.client("dynamodb"), table)
    return _finals if table else None


def export_record(record: SQSRecord) -> list[str]:
    batch_id, records = unpack_batch(record.body)
    finals = _finals_table()
    if finals is not None:
        # Final events are exactly-once: a copy from a re-delivered message is dropped.
        kept = finals.claim(batch_id, records)
        if len(kept) != len(records):
            logger.info("dropped duplicate final events",
                        extra={"batch": batch_id, "dropped": len(records) - len(kept)})
        records = kept
    keys = write_batch(
        _client(), bucket=os.environ[ENV_EVENTS_BUCKET], batch_id=batch_id, records=records
    )
    logger.debug("exported batch", extra={"batch": batch_id, "records": len(records)})
    return keys


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=export_record, processor=processor, context=context
    )
