"""A re-enqueue that cannot be written (its body must spill to S3 and the put fails)
after some recipients of the message became final: their finals are recorded, the
original stays in the queue for the others, and its redelivery sends to none of
the recipients already final. In-memory stores, a scripted transport, a fake clock;
the export's claims are made by the in-memory finals store as the export makes them.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from typing import Any

from quiver.bounce import default_classifier
from quiver.delivery import Attempt, Path
from quiver.dkim import SignerSet
from quiver.envelope import decode
from quiver.events import FINAL_EVENTS
from quiver.policy import parse_policy
from quiver.sender.complete import Completer, Completion
from quiver.sender.lifecycle import MAX_SQS_BODY, PARTIAL_RELEASE_MIN, MessageHandler
from quiver.smtp.reply import parse_reply
from quiver.storage.base import Outgoing, Received, StorageError
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryFinals, MemoryQueue

T0 = 1_790_000_000.0
POLICY = parse_policy("""
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[retry]
first = "5m"
jitter = 0
max_age = "1d"
""")
PATH = Path(source="s1", source_ip="192.0.2.1", mx="mx.example.org", mx_ip="192.0.2.9",
            site="mx.example.org")
HEAD = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\n"
# A long reply: carried in the retry's `_last`, it pushes the retry past SQS's limit.
GREY = parse_reply(451, "4.3.0 try later " + "y" * 480)
OK = parse_reply(250, "2.0.0 ok")
BOUNCE = parse_reply(550, "5.1.1 user unknown")
SPILL_DOWN = StorageError("PutObject: 503 Slow Down")


class Transport:
    """`ok` and `perm` answer at once; `temp` is greylisted on its first try only."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Any = None) -> list[Attempt]:
        tried_before = any(r in call for call in self.calls for r in recipients)
        self.calls.append(list(recipients))
        replies = {"ok": OK, "perm": BOUNCE, "temp": OK if tried_before else GREY}
        return [Attempt(rcpt=r, reply=replies[r.split("@")[0]], path=PATH) for r in recipients]


class Rig:
    def __init__(self, *, finals: bool = True) -> None:
        self.now = T0
        self.queue = MemoryQueue("outbound")
        self.sink = MemoryEventSink()
        self.bodies = MemoryBodyStore("spill")
        self.transport = Transport()
        self.finals = MemoryFinals() if finals else None
        self.received: Received | None = None

    async def handle(self) -> bool:
        """Receive the next visible message and handle it as a sender does."""
        completer = Completer(queue=self.queue, dlq=MemoryQueue("dlq"), sink=self.sink,
                              max_delay=0.001)
        handler = MessageHandler(
            policy=POLICY, transport=self.transport, signers=SignerSet([]),
            bodies=self.bodies, completer=completer, classifier=default_classifier(),
            clock=lambda: self.now, rng=random.Random(3),
            finalized=self.finals.finalized if self.finals is not None else None)
        (self.received,) = await self.queue.receive(max_messages=1, wait_seconds=0,
                                                    visibility=30)
        completer.start()
        try:
            return await handler.handle(self.received)
        finally:
            await completer.close()

    def export(self) -> None:
        """What the export Lambda does first with each published batch: claim its finals."""
        assert self.finals is not None
        for n, (batch_id, records) in enumerate(self.sink.published):
            self.finals.claim(batch_id or f"batch{n}", records)

    async def lapse(self, seconds: float) -> None:
        """`seconds` pass, and the original's visibility lapses with them."""
        assert self.received is not None
        self.now += seconds
        await self.queue.change_visibility([self.received.receipt], seconds=0)


def near_the_limit(to: list[str]) -> str:
    """A queue body within 200 bytes of SQS's limit: a retry of it with its `_last`
    bookkeeping cannot stay inline."""
    def text(raw: bytes) -> str:
        return json.dumps({"v": 1, "id": "m-1", "from": "b@example.com", "to": to,
                           "raw": base64.b64encode(raw).decode(), "_queued_at": T0})

    room = MAX_SQS_BODY - 150 - len(text(b""))  # for the base64 of the body
    out = text(HEAD + b"x" * (room * 3 // 4 - len(HEAD)))
    assert MAX_SQS_BODY - 200 <= len(out.encode()) <= MAX_SQS_BODY
    return out


def events(rig: Rig, rcpt: str) -> list[str]:
    return [r["event"] for r in rig.sink.records if r["rcpt"] == rcpt]


async def test_without_a_fault_the_retry_of_such_a_message_spills() -> None:
    """The premise of the tests below: the retry is too big for SQS."""
    rig = Rig()
    await rig.queue.send([Outgoing(body=near_the_limit(["ok@a.example", "temp@b.example"]))])
    assert await rig.handle()
    (retry,) = rig.queue.bodies()
    assert decode(retry).raw_s3 is not None and len(rig.bodies.objects) == 1


async def test_finals_are_recorded_and_the_redelivery_sends_only_to_the_pending() -> None:
    rig = Rig()
    original = near_the_limit(["ok@a.example", "temp@b.example", "perm@c.example"])
    await rig.queue.send([Outgoing(body=original)])
    rig.bodies.fail_put = SPILL_DOWN
    assert not await rig.handle()  # not completed: it comes back for `temp`
    assert rig.transport.calls == [["ok@a.example"], ["temp@b.example"], ["perm@c.example"]]
    # The finals (and the attempt that deferred `temp`) are durable; nothing was
    # re-enqueued; the original is still in the queue, invisible until it is due.
    assert events(rig, "ok@a.example") == ["delivered"]
    assert events(rig, "perm@c.example") == ["bounced"]
    assert events(rig, "temp@b.example") == ["deferred"]
    assert rig.queue.bodies() == [original] and rig.queue.in_flight() == 1
    assert rig.bodies.objects == {}
    (deferred,) = [r for r in rig.sink.records if r["event"] == "deferred"]
    assert deferred["next_attempt_at"] == "2026-09-21T14:18:20.000Z"  # T0 + 5 min

    rig.export()
    rig.bodies.fail_put = None
    await rig.lapse(PARTIAL_RELEASE_MIN)
    assert await rig.handle()
    assert rig.received is not None and rig.received.receive_count == 2
    assert rig.transport.calls[3:] == [["temp@b.example"]]
    assert events(rig, "ok@a.example") == ["delivered"]
    assert events(rig, "perm@c.example") == ["bounced"]
    assert events(rig, "temp@b.example") == ["deferred", "delivered"]
    finals = [(r["rcpt"], r["event"]) for r in rig.sink.records if r["event"] in FINAL_EVENTS]
    assert len(finals) == len(set(finals)) == 3
    assert len(rig.queue) == 0


async def test_with_nothing_final_nothing_is_recorded_and_the_original_returns() -> None:
    """Only a deferral: recording it now would record the same attempt again when the
    original returns and tries it."""
    rig = Rig()
    await rig.queue.send([Outgoing(body=near_the_limit(["temp@b.example"]))])
    rig.bodies.fail_put = SPILL_DOWN
    assert not await rig.handle()
    assert rig.sink.records == [] and len(rig.queue) == 1


async def test_without_the_finals_lookup_nothing_is_recorded() -> None:
    """A sender that cannot look finals up would send to the delivered recipient again
    on the redelivery: recording its final now would give it two."""
    rig = Rig(finals=False)
    await rig.queue.send([Outgoing(body=near_the_limit(["ok@a.example", "temp@b.example"]))])
    rig.bodies.fail_put = SPILL_DOWN
    assert not await rig.handle()
    assert rig.sink.records == [] and len(rig.queue) == 1


class _NoVisibility(MemoryQueue):
    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        raise StorageError("ChangeMessageVisibilityBatch: throttled")


async def test_a_kept_message_is_not_deleted_and_is_hidden_until_its_release() -> None:
    queue, sink = MemoryQueue("outbound"), MemoryEventSink()
    await queue.send([Outgoing(body="kept"), Outgoing(body="done")])
    kept, done = await queue.receive(max_messages=2, wait_seconds=0, visibility=0)
    completer = Completer(queue=queue, dlq=MemoryQueue("dlq"), sink=sink)
    record: Any = {"event": "delivered", "id": "m-1", "rcpt": "ok@a.example"}
    await completer.flush([Completion(received=kept, records=[record], release_after=600),
                           Completion(received=done)])
    assert sink.records == [record]
    assert queue.bodies() == ["kept"] and queue.in_flight() == 1


async def test_a_kept_message_whose_visibility_cannot_change_is_still_durable() -> None:
    """It returns after the visibility it had: its finals are recorded all the same."""
    queue, sink = _NoVisibility("outbound"), MemoryEventSink()
    await queue.send([Outgoing(body="kept")])
    (kept,) = await queue.receive(max_messages=1, wait_seconds=0, visibility=30)
    completer = Completer(queue=queue, dlq=MemoryQueue("dlq"), sink=sink, max_delay=0.001)
    completer.start()
    record: Any = {"event": "delivered", "id": "m-1", "rcpt": "ok@a.example"}
    try:
        await completer.complete(Completion(received=kept, records=[record], release_after=600))
    finally:
        await completer.close()
    assert sink.records == [record] and queue.bodies() == ["kept"]
