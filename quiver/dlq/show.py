"""`quiver dlq show`: a DLQ's depth and a sample of what is in it. Nothing is deleted:
sampled messages are hidden for SAMPLE_VISIBILITY while the sample is taken (so one
receive after another finds new ones), then made visible again at once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quiver.dlq.describe import describe
from quiver.dlq.queues import Pair, call

# Long enough to take a sample of a few receives, short enough that a show that dies
# before releasing them hides nothing for long.
SAMPLE_VISIBILITY = 30
DEFAULT_SAMPLE = 10


@dataclass
class Shown:
    queue: str
    dlq_url: str
    source_url: str
    visible: int
    in_flight: int
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def oldest(self) -> dict[str, Any] | None:
        dated = [m for m in self.sample if m.get("sent_timestamp")]
        return min(dated, key=lambda m: m["sent_timestamp"]) if dated else None

    def reasons(self) -> list[tuple[str, int]]:
        return Counter(str(m["reason"]) for m in self.sample).most_common()

    def as_json(self) -> dict[str, Any]:
        oldest = self.oldest
        return {
            "queue": self.queue, "dlq_url": self.dlq_url, "source_url": self.source_url,
            "messages": self.visible, "in_flight": self.in_flight,
            "sampled": len(self.sample),
            # The oldest of the sample; of the whole queue when the sample is all of it.
            "oldest": oldest["sent_at"] if oldest else None,
            "oldest_is_of_all": len(self.sample) >= self.visible,
            "reasons": [{"reason": r, "count": n} for r, n in self.reasons()],
            "sample": self.sample,
        }


def show(sqs: Any, pair: Pair, *, sample: int = DEFAULT_SAMPLE) -> Shown:
    attributes = call(sqs.get_queue_attributes, QueueUrl=pair.dlq_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    shown = Shown(queue=pair.name, dlq_url=pair.dlq_url, source_url=pair.source_url,
                  visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
                  in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))
    held: list[str] = []
    try:
        seen: set[str] = set()
        while len(shown.sample) < sample:
            got = call(sqs.receive_message, QueueUrl=pair.dlq_url,
                       MaxNumberOfMessages=min(10, sample - len(shown.sample)),
                       VisibilityTimeout=SAMPLE_VISIBILITY, WaitTimeSeconds=0,
                       AttributeNames=["All"], MessageAttributeNames=["All"])
            messages = got.get("Messages", [])
            held.extend(m["ReceiptHandle"] for m in messages)
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                break
            for message in fresh:
                seen.add(message["MessageId"])
                shown.sample.append(describe(pair.name, message))
    finally:
        release(sqs, pair.dlq_url, held)
    return shown


def release(sqs: Any, queue_url: str, receipts: list[str]) -> None:
    """Make received messages visible again now."""
    for start in range(0, len(receipts), 10):
        call(sqs.change_message_visibility_batch, QueueUrl=queue_url, Entries=[
            {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": 0}
            for n, r in enumerate(receipts[start:start + 10])])
