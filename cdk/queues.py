"""The outbound and events queues, each with its dead-letter queue.

Retention trade-offs: SQS keeps a message's original enqueue time when it moves it
to a dead-letter queue, so a DLQ must retain longer than its source or a message
that reached it late would vanish before anyone looks. The DLQs keep the SQS
maximum, 14 days; the sources keep less.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.logical_ids import pin_logical_id
from quiver.names import ResourceNames

DLQ_RETENTION = Duration.days(14)
# SQS's own cap; the spill threshold in the policy keeps bodies below it.
MAX_MESSAGE_BYTES = 256 * 1024
# A message received this many times without being finished is poison (it crashes or
# hangs the sender). Drains during rolling deployments and not-yet-due retries also
# count as receives, so the bound leaves room for them.
OUTBOUND_MAX_RECEIVES = 10
EVENTS_MAX_RECEIVES = 5
EVENTS_RETENTION = Duration.days(4)

LOGICAL_IDS = {
    "outbound": "OutboundQueue",
    "outbound_dlq": "OutboundDeadLetterQueue",
    "events": "EventsQueue",
    "events_dlq": "EventsDeadLetterQueue",
}


class Queues(Construct):
    """SSE-SQS encrypted, TLS-only queues, retained when the stack is deleted."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        names: ResourceNames,
        outbound_retention: Duration,
        outbound_visibility_timeout: Duration,
        events_visibility_timeout: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        # The sender reads it too: it gives a message up one receive before this.
        self.outbound_max_receives = OUTBOUND_MAX_RECEIVES
        if outbound_retention.to_seconds() >= DLQ_RETENTION.to_seconds():
            raise ValueError("outbound retention must be shorter than the DLQ's 14 days")
        self.outbound_dlq = self._queue(
            "OutboundDeadLetterQueue", names.outbound_dlq, retention=DLQ_RETENTION,
        )
        self.outbound = self._queue(
            "OutboundQueue", names.outbound_queue,
            retention=outbound_retention,
            visibility_timeout=outbound_visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.outbound_dlq, max_receive_count=self.outbound_max_receives,
            ),
        )
        self.events_dlq = self._queue(
            "EventsDeadLetterQueue", names.events_dlq, retention=DLQ_RETENTION,
        )
        self.events = self._queue(
            "EventsQueue", names.events_queue,
            retention=EVENTS_RETENTION,
            visibility_timeout=events_visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.events_dlq, max_receive_count=EVENTS_MAX_RECEIVES,
            ),
        )
        for attr, logical_id in LOGICAL_IDS.items():
            pin_logical_id(getattr(self, attr), logical_id)

    def _queue(
        self,
        construct_id: str,
        name: str,
        *,
        retention: Duration,
        visibility_timeout: Duration | None = None,
        dead_letter_queue: sqs.DeadLetterQueue | None = None,
    ) -> sqs.Queue:
        return sqs.Queue(
            self, construct_id,
            queue_name=name,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=retention,
            visibility_timeout=visibility_timeout,
            max_message_size_bytes=MAX_MESSAGE_BYTES,
            # Long polling: a receive waits for messages instead of returning empty.
            receive_message_wait_time=Duration.seconds(20),
            dead_letter_queue=dead_letter_queue,
            removal_policy=RemovalPolicy.RETAIN,
        )
