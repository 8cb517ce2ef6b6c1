"""A busy sender asks SQS for whole receives: with messages in hand it waits for room
for as many as fill the answer's 64 KB billing chunks (never more than a quarter of
its limit), and the receivers' requests in progress count against the in-flight
limit, so together they never overshoot it."""

from __future__ import annotations

import asyncio
from typing import Any

from quiver.policy import Intake
from quiver.sender.engine import Sender
from quiver.storage.base import Received

WHOLE = 8  # what the queue says fills a receive's billing chunks
LIMIT = 40  # max_inflight_messages: a quarter of it is more than WHOLE
WAIT = 10.0  # bounds a stuck test, not a speed


class BilledQueue:
    """Hands out waiting messages as a long poll does, and records each request."""

    def __init__(self, sender: list[Sender]) -> None:
        self.sender = sender
        self.waiting: list[Received] = []
        self.arrived = asyncio.Event()
        self.asked: list[tuple[int, int]] = []  # (max_messages, messages in hand then)
        self.asking = 0
        self.peak = 0  # in hand plus what the requests in progress may bring

    def receive_size(self, limit: int) -> int:
        return min(limit, WHOLE)

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility: int
                      ) -> list[Received]:
        in_hand = self.sender[0].in_hand
        self.asked.append((max_messages, in_hand))
        self.asking += max_messages
        self.peak = max(self.peak, in_hand + self.asking)
        try:
            while not self.waiting:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), 0.2)
                except TimeoutError:
                    return []
            taken, self.waiting = self.waiting[:max_messages], self.waiting[max_messages:]
            return taken
        finally:
            self.asking -= max_messages

    def add(self, count: int, start: int) -> None:
        self.waiting += [Received(body="x", receipt=f"r{i}", message_id=f"m{i}")
                         for i in range(start, start + count)]
        self.arrived.set()

    async def change_visibility(self, receipts: list[str], *, seconds: int) -> None:
        return None


class GatedHandler:
    """Each message's work ends when the test says so."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.open = False  # from now on, every message's work ends at once

    async def handle(self, received: Received) -> bool:
        gate = self.gates.setdefault(received.message_id, asyncio.Event())
        if not self.open:
            await gate.wait()
        return True

    def finish(self, count: int) -> None:
        for gate in [g for g in self.gates.values() if not g.is_set()][:count]:
            gate.set()


class Completer:
    deadline_of: Any = None

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def receipt_of(self, received: Received) -> str:
        return received.receipt

    def use_receipt(self, message_id: str, receipt: str) -> None:
        return None


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


def started(*, receivers: int, limit: int
            ) -> tuple[BilledQueue, GatedHandler, Sender, asyncio.Event, asyncio.Task[None]]:
    """A sender running on the fakes (inside a running event loop)."""
    holder: list[Sender] = []
    queue, handler = BilledQueue(holder), GatedHandler()
    sender = Sender(intake=Intake(receivers=receivers, max_inflight_messages=limit,
                                  drain_deadline=5.0),
                    queue=queue,  # type: ignore[arg-type]
                    handler=handler,  # type: ignore[arg-type]
                    completer=Completer())  # type: ignore[arg-type]
    holder.append(sender)
    stop = asyncio.Event()
    return queue, handler, sender, stop, asyncio.create_task(sender.run(stop))


def test_a_busy_sender_waits_for_room_for_a_whole_receive() -> None:
    async def scenario() -> tuple[BilledQueue, Sender]:
        queue, handler, sender, stop, running = started(receivers=3, limit=LIMIT)
        queue.add(100, 0)
        await until(lambda: sender.in_hand == LIMIT)  # five whole receives
        asked = len(queue.asked)
        handler.finish(WHOLE - 1)  # room for 7: not a whole receive
        await until(lambda: sender.in_hand == LIMIT - WHOLE + 1)
        await asyncio.sleep(0.1)  # a receiver that would ask, asks now
        assert len(queue.asked) == asked and sender.in_hand == LIMIT - WHOLE + 1
        handler.finish(1)  # room for 8
        await until(lambda: sender.in_hand == LIMIT)
        handler.open = True
        handler.finish(LIMIT)
        await until(lambda: not queue.waiting and sender.in_hand == 0)
        stop.set()
        await asyncio.wait_for(running, WAIT)
        return queue, sender

    queue, sender = asyncio.run(scenario())
    assert queue.peak <= LIMIT
    busy = [wanted for wanted, in_hand in queue.asked if in_hand]
    assert busy and all(wanted == WHOLE for wanted in busy), queue.asked
    assert sender.stats.received == 100


def test_an_idle_sender_asks_at_once() -> None:
    async def scenario() -> BilledQueue:
        queue, handler, sender, stop, running = started(receivers=2, limit=5)
        queue.add(1, 0)
        await until(lambda: sender.in_hand == 1)
        handler.finish(1)
        await until(lambda: sender.in_hand == 0)
        stop.set()
        await asyncio.wait_for(running, WAIT)
        return queue

    queue = asyncio.run(scenario())
    # A limit under a whole receive is asked for whole; nothing in hand, no waiting.
    assert queue.asked[0] == (5, 0)
    assert queue.peak <= 5


def test_a_small_limit_is_not_held_up_by_one_slow_delivery() -> None:
    async def scenario() -> BilledQueue:
        queue, handler, sender, stop, running = started(receivers=2, limit=5)
        queue.add(1, 0)
        await until(lambda: sender.in_hand == 1)  # a delivery that does not end yet
        queue.add(20, 1)
        # Room for four, under a whole receive: a quarter of 5 rounds down to 1, so
        # the free slots are filled while the slow one goes on.
        await until(lambda: sender.in_hand == 5)
        handler.open = True
        handler.finish(5)
        await until(lambda: not queue.waiting and sender.in_hand == 0)
        stop.set()
        await asyncio.wait_for(running, WAIT)
        return queue

    queue = asyncio.run(scenario())
    assert queue.peak <= 5
