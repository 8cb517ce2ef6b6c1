"""The embedded local stack as tests drive it: export pump, sender processes, event reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from suite_mode import require_all

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.export_pump import ExportPump, Tally
from quiver.devstack.samples import render
from quiver.devstack.stack import LocalStack
from quiver.export import read_object


class Running:
    """The local stack with its export pump and a sender process."""

    def __init__(self, stack: LocalStack, pump: ExportPump, tally: Tally, *,
                 start_sender: bool = True) -> None:
        self.stack = stack
        self.pump = pump
        self.tally = tally
        self._exported: dict[str, list[dict]] = {}  # by S3 key
        self.sender = stack.start_sender() if start_sender else None

    @property
    def deployment(self):
        assert self.stack.deployment is not None
        return self.stack.deployment

    def events(self) -> list[dict]:
        """Every exported event record so far, in object-key order.

        An export object's key names its batch and a re-export writes the same bytes, so
        a key's content never changes and each is read once: reading them all on every
        poll loaded moto, the server the sender under test depends on, with work growing
        with every object exported.
        """
        s3 = self.stack.client("s3")
        bucket = self.deployment.events_bucket
        out: list[dict] = []
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix="events/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                records = self._exported.get(key)
                if records is None:
                    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                    records = self._exported[key] = read_object(body)
                out.extend(records)
        return out

    def events_for(self, ids: set[str], *, finals: int, timeout: float) -> list[dict]:
        """Wait until `finals` final events exist for messages in `ids`; return their events."""
        from quiver.events import FINAL_EVENTS

        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.events() if e["id"] in ids]
            done = sum(1 for e in events if e["event"] in FINAL_EVENTS)
            if done >= finals or time.monotonic() > deadline:
                return events
            for process in self.stack.senders:
                assert process.poll() is None, f"sender exited with {process.returncode}"
            time.sleep(0.5)

    def dlq_bodies(self) -> list[str]:
        sqs = self.stack.client("sqs")
        out = []
        while True:
            got = sqs.receive_message(QueueUrl=self.deployment.outbound_dlq_url,
                                      MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                      VisibilityTimeout=600)
            messages = got.get("Messages", [])
            if not messages:
                return out
            out.extend(m["Body"] for m in messages)


    def queue_counts(self) -> tuple[int, int]:
        """(visible, in flight) on the outbound queue."""
        attrs = self.stack.client("sqs").get_queue_attributes(
            QueueUrl=self.deployment.outbound_queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))


@contextmanager
def running_stack(root: Path, *, max_age: str = "20s", start_sender: bool = True,
                  max_receives: int | None = None, feedback: bool = False,
                  policy_fragment: dict[str, Any] | None = None,
                  http_ingress: bool = False) -> Iterator[Running]:
    # In CI the stack must run the production egress path (HAProxy); a missing haproxy
    # is an error there, not a silent switch to direct egress.
    stack = LocalStack(root, max_age=max_age, haproxy=True if require_all() else None,
                       feedback=feedback, policy_fragment=policy_fragment,
                       fragment_origin="the test's policy fragment",
                       http_ingress=http_ingress)
    if max_receives is not None:
        stack.max_receives = max_receives  # the outbound queue's maxReceiveCount
    stack.start()
    assert stack.deployment is not None
    tally = Tally()
    pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                      environ=stack.env())
    pump.start()
    try:
        yield Running(stack, pump, tally, start_sender=start_sender)
    finally:
        pump.stop()
        stack.stop()


def message(i: int, to: list[str], *, prefix: str, pool: str | None = None) -> OutboundMessage:
    mid = f"{prefix}-{i:05d}"
    return OutboundMessage(
        id=mid, sender="bounces@news.quiver-demo.test", to=to, pool=pool,
        raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test", to=to,
                   subject=f"{prefix} {i}"))


def enqueue(running: Running, messages: list[OutboundMessage]) -> None:
    client = QuiverClient(sqs=running.stack.client("sqs"), s3=running.stack.client("s3"),
                          queue_url=running.deployment.outbound_queue_url,
                          spill_bucket=running.deployment.spill_bucket)
    for start in range(0, len(messages), 100):
        result = client.enqueue_batch(messages[start:start + 100])
        assert not result.failed, result.failed
