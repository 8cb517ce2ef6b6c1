"""Event export Lambda: events-queue batches → partitioned JSONL objects in S3.

Thin by design: it parses the SQS trigger, hands each record to
`quiver.export.Exporter`, and reports the records that failed so SQS retries
only those (partial batch responses). A batch that is not a v1 event batch
fails on its own and ends in the events DLQ after its retries; it never blocks
the others.
"""

from __future__ import annotations

import functools
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

from quiver.export import Exporter
from quiver.settings import EXPORT_VARIABLES, deployment_from_env

logger = Logger(service="quiver-event-export")
processor = BatchProcessor(event_type=EventType.SQS)


@functools.cache
def exporter() -> Exporter:
    """The function's one Exporter, built on the cold start's first invocation rather
    than at import: the module imports without settings (the packaging check), and a
    function missing a setting fails its invocations naming it."""
    deployment = deployment_from_env(os.environ, required=EXPORT_VARIABLES)
    session = boto3.session.Session(region_name=deployment.region)
    return Exporter.from_deployment(deployment, session=session, log=logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=exporter().export_record, processor=processor,
        context=context,
    )
