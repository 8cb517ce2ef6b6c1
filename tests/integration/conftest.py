"""Shared fixtures: one embedded local stack (moto server, DNS, MX, sender) per session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quiver.export import read_object
from quiver.localstack.export_pump import ExportPump, Tally
from quiver.localstack.stack import LocalStack


class Running:
    """The local stack with its export pump and a sender process."""

    def __init__(self, stack: LocalStack, pump: ExportPump, tally: Tally) -> None:
        self.stack = stack
        self.pump = pump
        self.tally = tally
        self.sender = stack.start_sender()

    @property
    def deployment(self):
        assert self.stack.deployment is not None
        return self.stack.deployment

    def events(self) -> list[dict]:
        s3 = self.stack.client("s3")
        out: list[dict] = []
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.deployment.events_bucket, Prefix="events/"):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=self.deployment.events_bucket, Key=item["Key"])
                out.extend(read_object(body["Body"].read()))
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
            assert self.sender.poll() is None, "sender exited"
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


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root: Path = tmp_path_factory.mktemp("quiver-local")
    stack = LocalStack(root, max_age="20s").start()
    assert stack.deployment is not None
    tally = Tally()
    pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                           environ=stack.env())
    pump.start()
    running = Running(stack, pump, tally)
    try:
        yield running
    finally:
        pump.stop()
        stack.stop()
