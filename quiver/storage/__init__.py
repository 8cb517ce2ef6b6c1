"""Every AWS store behind a narrow interface: queues, event sinks, message bodies,
final-event claims, fleet membership, the suppression list.

`base.py` has the protocols; `aws.py` (S3, events, Secrets Manager), `dynamo.py`
(DynamoDB) and `sqs_lean.py` (SQS) the AWS implementations, all through
`boto_calls.py` or their own bounded client (`dynamo_lean.py`: the suppression
check's batch calls); `memory.py` the in-memory ones for unit tests. SQS batching
is `sqs.py`, for the sender and QuiverClient alike.
"""

from quiver.storage.base import (
    BodyStore,
    EventSink,
    FinalsStore,
    Membership,
    Outgoing,
    Queue,
    Received,
    StorageError,
    Suppression,
    SuppressionStore,
)

__all__ = [
    "BodyStore", "EventSink", "FinalsStore", "Membership", "Outgoing", "Queue", "Received",
    "StorageError", "Suppression", "SuppressionStore",
]
