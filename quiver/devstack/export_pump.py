"""Runs the event export in-process on SQS-shaped events, as the Lambda does.

What AWS's event source mapping does: long-poll the events queue, hand the
function a batch in the Lambda SQS event shape, delete the records it did not
report as failed. The pump runs the Lambda's own record function
(`Exporter.export_record`) under the same Powertools batch processing, with an
Exporter of its own on this stack's clients. It also tallies records so the
demo can show progress. Its Exporter runs the tenant guards as the Lambda does.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quiver.devstack import moto_server
from quiver.devstack.lambda_pump import LambdaPump
from quiver.events import (
    CONTROL_EVENTS,
    FINAL_EVENTS,
    POST_DELIVERY_EVENTS,
    EventBatchError,
    Record,
    unpack_batch,
)
from quiver.export import Exporter, guards_of
from quiver.settings import Deployment
from quiver.storage.dynamo import DynamoFinals

# The recipients a tally remembers, by event: what the feedback loop acted on (the
# demo mails each again and expects `suppressed`), and the hard bounces that suppress
# (category bad-mailbox, the policy's default). Everything else is only counted, so a
# long `quiver local` session does not keep every address it delivered to.
REMEMBERED = frozenset({*POST_DELIVERY_EVENTS, "suppressed"})
SUPPRESSING_BOUNCE = "bad-mailbox"


@dataclass
class Tally:
    """Counts of exported records by (event type, recipient domain)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    finals: int = 0
    first_attempts: int = 0
    records: int = 0
    rcpts: dict[str, set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, records: list[Record]) -> None:
        with self.lock:
            for r in records:
                rcpt = r.get("rcpt") or ""
                event = r["event"]
                domain = (rcpt.rpartition("@")[2] if rcpt else
                          "(control)" if event in CONTROL_EVENTS else "(undecodable)")
                self.counts[(event, domain)] += 1
                self.records += 1
                if event in FINAL_EVENTS:
                    self.finals += 1
                if (r.get("attempt", 0) <= 1 and event not in POST_DELIVERY_EVENTS
                        and event not in CONTROL_EVENTS):
                    # Each recipient has exactly one record of its first attempt
                    # (or a rejected/expired record at attempt 0).
                    self.first_attempts += 1
                bounce = r.get("bounce")
                remembered = event in REMEMBERED or (
                    event == "bounced" and bounce is not None
                    and bounce["category"] == SUPPRESSING_BOUNCE)
                if remembered and rcpt:
                    self.rcpts.setdefault(event, set()).add(rcpt)

    def recipients(self, event: str) -> set[str]:
        with self.lock:
            return set(self.rcpts.get(event, ()))

    def total(self, event: str) -> int:
        with self.lock:
            return sum(n for (e, _), n in self.counts.items() if e == event)


class ExportPump(LambdaPump):
    """The export Lambda on the events queue, tallying what it exported."""

    def __init__(
        self, *, sqs: Any, deployment: Deployment, on_records: Tally, environ: dict[str, str]
    ) -> None:
        endpoint = environ["AWS_ENDPOINT_URL"]
        finals = (DynamoFinals(moto_server.client(endpoint, "dynamodb"),
                               deployment.finals_table)
                  if deployment.finals_table else None)
        s3 = moto_server.client(endpoint, "s3")
        # The Lambda's guards, on the policy the stack published and its controls table.
        guard = guards_of(deployment, dynamodb=moto_server.client(endpoint, "dynamodb"),
                          s3=s3, ssm=lambda: moto_server.client(endpoint, "ssm"))
        self._exporter = Exporter(s3=s3, bucket=deployment.events_bucket, finals=finals,
                                  guard=guard)
        super().__init__(sqs=sqs, queue_url=deployment.events_queue_url,
                         region=deployment.region, name="export-pump",
                         record_handler=self._exporter.export_record)
        self._tally = on_records

    def after_batch(self, done: list[dict[str, Any]]) -> None:
        for m in done:
            try:
                _, records = unpack_batch(m["Body"])
            except EventBatchError:
                continue
            self._tally.add(records)
