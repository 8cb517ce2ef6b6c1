"""Final events claimed only where a second one can exist (quiver.storage.finals): the
sender's confirmations, the export's reading of them, and exactly one final event per
recipient whatever receives crash, run late or come back, in whatever order the
export sees the batches."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.envelope import Envelope
from quiver.events import FINAL_EVENTS, Record, make_event, pack_batches, unpack_batch_from
from quiver.export import Exporter, read_object
from quiver.sender.complete import Completer, Completion
from quiver.storage.base import COPY_ATTRIBUTE, Outgoing, Received, StorageError
from quiver.storage.finals import (
    Confirmation,
    confirmation_item,
    must_claim,
    parse_confirmation,
)
from quiver.storage.memory import MemoryEventSink, MemoryFinals, MemoryQueue

RCPTS = ("a@example.org", "b@example.org", "c@example.org")


class RecordingS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[Key] = Body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyQueue(MemoryQueue):
    """A queue whose next deletes fail: the sender's view of a crash (or a lost delete)
    after its events were accepted."""

    def __init__(self) -> None:
        super().__init__("outbound")
        self.fail_deletes = 0
        # SQS answers a delete with a lapsed receipt handle as a success, and may keep
        # the message: the next deletes do nothing.
        self.ignore_deletes = 0

    async def delete(self, receipts: Sequence[str]) -> None:
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise StorageError("delete failed (test)")
        if self.ignore_deletes:
            self.ignore_deletes -= 1
            return
        await super().delete(receipts)


def finals(env: Envelope, rcpts: Sequence[str] | None = None) -> list[Record]:
    return [make_event("delivered", envelope=env, rcpt=r, attempt=1, pool="p",
                       at=1_790_000_000.0) for r in (rcpts or env.recipients)]


class Rig:
    def __init__(self, confirm: Any = None) -> None:
        self.queue = FlakyQueue()
        self.dlq = MemoryQueue("dlq")
        self.sink = MemoryEventSink()
        self.finals = MemoryFinals()
        self.clock = Clock()
        self.deadlines: dict[str, float] = {}
        self.completer = Completer(queue=self.queue, dlq=self.dlq, sink=self.sink,
                                   confirm=confirm or self.finals.confirm, clock=self.clock)
        self.completer.deadline_of = self.deadlines.get

    async def receive(self, *, visibility: float = 60.0) -> Received:
        got = await self.queue.receive(max_messages=1, wait_seconds=0, visibility=0)
        assert len(got) == 1
        self.deadlines[got[0].message_id] = self.clock.now + visibility
        return got[0]

    def deliver_once(self, env: Envelope) -> None:
        """A caller's message, received once and completed with a final event for each
        of its recipients."""

        async def go() -> None:
            await self.queue.send([Outgoing(body="m")])
            assert await self.complete(Completion(received=await self.receive(),
                                                  records=finals(env)))

        asyncio.run(go())

    async def complete(self, completion: Completion) -> bool:
        """Whether the completion was durable (its future's outcome)."""
        completion.future = asyncio.get_running_loop().create_future()
        await self.completer.flush([completion])
        await self.completer.confirmations()
        assert completion.future.done()
        return completion.future.exception() is None

    def export(self, order: Sequence[int] | None = None) -> tuple[Exporter, list[Record]]:
        s3 = RecordingS3()
        exporter = Exporter(s3=s3, bucket="events", finals=self.finals)
        batches = [body for batch_id, records in self.sink.published
                   for _, body in pack_batches(records, batch_id=batch_id)]
        for i in order if order is not None else range(len(batches)):
            exporter.export_record(Body(batches[i]))
        return exporter, [r for data in s3.objects.values() for r in read_object(data)]


class Body:
    def __init__(self, body: str) -> None:
        self.body = body


def envelope(n: int = 1) -> Envelope:
    return Envelope(id="m-1", sender="s@example.com", recipients=RCPTS[:n], raw=b"x")


def test_a_message_received_once_and_deleted_in_time_is_confirmed_and_claims_nothing() -> None:
    rig = Rig()
    rig.deliver_once(envelope(2))
    (producer, _), = rig.sink.published
    assert rig.finals.confirmations == {producer: Confirmation(risky=frozenset())}
    _, exported = rig.export()
    assert sorted(r["rcpt"] for r in exported) == list(RCPTS[:2])
    assert rig.finals.claims == {}  # not one claim written


@pytest.mark.parametrize("case", ["redelivered", "copy", "second copy", "kept", "dead"])
def test_a_completion_at_risk_is_confirmed_with_its_id_listed_and_claimed(case: str) -> None:
    rig = Rig()

    async def go() -> None:
        attributes = {COPY_ATTRIBUTE: "1"} if case == "copy" else {}
        await rig.queue.send([Outgoing(body="m", attributes=attributes)])
        received = await rig.receive()
        if case == "redelivered":
            await rig.queue.change_visibility([received.receipt], seconds=0)
            received = await rig.receive()
        if case == "second copy":
            rig.completer.use_receipt(received.message_id, received.receipt)
        completion = Completion(received=received, records=finals(envelope()))
        if case == "kept":
            completion.release_after = 300
        if case == "dead":
            completion.dead = [Outgoing(body="m")]
        assert await rig.complete(completion)

    asyncio.run(go())
    (producer, _), = rig.sink.published
    assert rig.finals.confirmations[producer] == Confirmation(risky=frozenset({"m-1"}))
    rig.export()
    assert rig.finals.claims == {("m-1", RCPTS[0]): rig.finals.claims[("m-1", RCPTS[0])]}


def test_retries_and_dead_letters_are_sent_marked_as_copies() -> None:
    rig = Rig()

    async def go() -> None:
        await rig.queue.send([Outgoing(body="m")])
        received = await rig.receive()
        assert await rig.complete(Completion(
            received=received, retry=[Outgoing(body="r", attributes={"x": "1"})],
            dead=[Outgoing(body="d")]))
        copy, = await rig.queue.receive(max_messages=1, wait_seconds=0, visibility=0)
        assert copy.copy and copy.body == "r"
        dead, = await rig.dlq.receive(max_messages=1, wait_seconds=0, visibility=0)
        assert dead.copy

    asyncio.run(go())
    assert rig.queue.attributes() == [{"x": "1", COPY_ATTRIBUTE: "1"}]
    assert rig.finals.confirmations == {}  # no final event: nothing to confirm


def test_a_deletion_past_the_visibility_deadline_leaves_the_flush_unconfirmed() -> None:
    rig = Rig()

    async def go() -> None:
        await rig.queue.send([Outgoing(body="m")])
        received = await rig.receive(visibility=30)
        rig.clock.now += 30  # the deletion returns as the message becomes visible
        assert await rig.complete(Completion(received=received, records=finals(envelope())))

    asyncio.run(go())
    assert rig.finals.confirmations == {}
    rig.export()
    assert ("m-1", RCPTS[0]) in rig.finals.claims


def test_without_a_deadline_source_nothing_is_confirmed() -> None:
    rig = Rig()
    rig.completer.deadline_of = None
    rig.deliver_once(envelope())
    assert rig.finals.confirmations == {}


def test_a_failed_confirmation_only_costs_claims() -> None:
    async def refuse(producer: str, risky: Any) -> None:
        raise StorageError("table unavailable (test)")

    rig = Rig(confirm=refuse)
    rig.deliver_once(envelope())
    _, exported = rig.export()
    assert [r["rcpt"] for r in exported] == [RCPTS[0]]
    assert ("m-1", RCPTS[0]) in rig.finals.claims


def test_batches_carry_their_producer_and_older_batches_read_without_one() -> None:
    records = finals(envelope())
    (_, body), = pack_batches(records, batch_id="flush1")
    assert unpack_batch_from(body)[1] == "flush1"
    (_, plain), = pack_batches(records)
    assert unpack_batch_from(plain)[1] is None


def test_a_confirmation_item_round_trips_and_an_unknown_one_reads_as_none() -> None:
    item = confirmation_item("f1", {"m-2", "m-1"}, expires=5)
    assert parse_confirmation(item) == Confirmation(risky=frozenset({"m-1", "m-2"}))
    assert parse_confirmation({**item, "v": {"N": "2"}}) is None
    assert parse_confirmation(None) is None
    assert must_claim(None)(("m-1", "a"))
    assert not must_claim(Confirmation(risky=frozenset({"m-2"})))(("m-1", "a"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=10)


@given(st.dictionaries(st.sampled_from(["pk", "sk", "v", "risky", "x"]), json_values))
def test_any_item_shape_parses_to_a_confirmation_or_none(item: dict[str, Any]) -> None:
    found = parse_confirmation(item)
    assert found is None or isinstance(found, Confirmation)


# What each receive of the message does: crash before its events are accepted, crash
# (or lose the delete) after they are, complete after its visibility lapsed (so
# another receive may run beside it), or complete in time (the end of the message).
OUTCOMES = ("crash_before", "crash_after", "late", "ok")


@settings(max_examples=150, deadline=None)
@given(recipients=st.integers(1, 3),
       receives=st.lists(st.sampled_from(OUTCOMES[:3]), max_size=4),
       order=st.randoms(use_true_random=False), rerun=st.booleans())
def test_exactly_one_final_event_per_recipient_across_crashes_and_redeliveries(
        recipients: int, receives: list[str], order: Any, rerun: bool) -> None:
    rig = Rig()
    env = envelope(recipients)

    async def go() -> None:
        await rig.queue.send([Outgoing(body="m")])
        for outcome in [*receives, "ok"]:
            received = await rig.receive(visibility=30)
            completion = Completion(received=received, records=finals(env))
            if outcome == "crash_before":
                rig.sink.fail_next = 1
            elif outcome == "crash_after":
                rig.queue.fail_deletes = 1
            elif outcome == "late":
                # Its visibility lapsed while it was worked on: another receive took it,
                # and this one's delete (with a lapsed receipt handle) kept it.
                rig.clock.now += 31
                rig.queue.ignore_deletes = 1
            done = await rig.complete(completion)
            assert done == (outcome in ("ok", "late"))
            if outcome != "ok":
                await rig.queue.change_visibility([received.receipt], seconds=0)
            rig.clock.now += 1

    asyncio.run(go())
    count = sum(len(pack_batches_of(records, batch_id))
                for batch_id, records in rig.sink.published)
    indexes = list(range(count))
    order.shuffle(indexes)
    if rerun:  # the export runs some batches twice (a Lambda retry)
        indexes += indexes[: len(indexes) // 2]
    _, exported = rig.export(indexes)
    per_recipient = Counter(r["rcpt"] for r in exported if r["event"] in FINAL_EVENTS)
    assert per_recipient == {r: 1 for r in env.recipients}


def pack_batches_of(records: list[Record], batch_id: str | None) -> list[tuple[str, str]]:
    return list(pack_batches(records, batch_id=batch_id))
