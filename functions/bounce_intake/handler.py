"""Bounce intake Lambda: DSNs SES stored in the inbound bucket → async_bounce events and
hard-bounce suppression; unsubscribe requests mailed to a List-Unsubscribe mailto
address (stored under the same prefix) → unsubscribed events and suppression.

Thin by design: the SQS messages carry S3 event notifications for the objects SES
wrote; each goes to `quiver.intake.build.InboundProcessor`, and the records that
failed (a store error, a message that is no S3 notification) are reported so SQS
retries only those (partial batch responses), then moves them to the queue's DLQ.
Dropped mail (forged, expired key, another tenant's, an auto-reply...) is counted
as EMF metrics after each batch; it is not a failure.
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

from quiver.intake.build import InboundProcessor
from quiver.settings import INTAKE_VARIABLES, deployment_from_env

logger = Logger(service="quiver-bounce-intake")
processor = BatchProcessor(event_type=EventType.SQS)


@functools.cache
def intake() -> InboundProcessor:
    """The function's one processor, built on the cold start's first invocation (the
    module imports without settings; a missing setting fails invocations naming it)."""
    deployment = deployment_from_env(os.environ, required=INTAKE_VARIABLES)
    session = boto3.session.Session(region_name=deployment.region)
    return InboundProcessor.from_deployment("bounce", deployment, session=session, log=logger)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    work = intake()
    try:
        return process_partial_response(
            event=event, record_handler=work.handle, processor=processor, context=context,
        )
    finally:
        work.counts.flush()
