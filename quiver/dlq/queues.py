"""Which queue is which: a source queue from the deployment, its DLQ from the source's
redrive policy (where SQS itself moves what keeps failing)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from quiver.settings import ENV_EVENTS_QUEUE_URL, ENV_OUTBOUND_QUEUE_URL, Deployment

QueueName = Literal["outbound", "events"]
QUEUE_NAMES: tuple[QueueName, ...] = ("outbound", "events")


class DlqError(RuntimeError):
    """A DLQ operation that cannot go on; the message says what to do next."""


@dataclass(frozen=True, slots=True)
class Pair:
    name: QueueName
    source_url: str
    dlq_url: str


def resolve(sqs: Any, deployment: Deployment, name: QueueName) -> Pair:
    source = (deployment.outbound_queue_url if name == "outbound"
              else deployment.events_queue_url)
    variable = ENV_OUTBOUND_QUEUE_URL if name == "outbound" else ENV_EVENTS_QUEUE_URL
    if not source:
        raise DlqError(f"no {name} queue: set {variable} (`quiver local` prints it; the "
                       "deployed one is the stack's)")
    if source.endswith(".fifo"):
        raise DlqError(f"{source}: a FIFO queue; Quiver's queues are standard queues")
    attributes = call(sqs.get_queue_attributes, QueueUrl=source,
                      AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        if name == "outbound" and deployment.outbound_dlq_url:
            return Pair(name, source, deployment.outbound_dlq_url)
        raise DlqError(f"{source} has no redrive policy, so no dead-letter queue")
    arn = str(json.loads(policy)["deadLetterTargetArn"])
    # arn:aws:sqs:<region>:<account>:<queue name>
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise DlqError(f"{source}: redrive policy names {arn!r}, not an SQS queue ARN")
    url = call(sqs.get_queue_url, QueueName=parts[5],
               QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
    return Pair(name, source, str(url))


def call(fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise DlqError(f"SQS {getattr(fn, '__name__', 'call')}: {exc}") from exc
