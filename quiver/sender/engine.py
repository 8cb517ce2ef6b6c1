"""Intake and shutdown: long-poll receivers, bounded in-flight work, visibility
extension, and a SIGTERM drain that leaves nothing invisible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from quiver.policy import Intake
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import BilledReceives, Queue, Received, StorageError

log = logging.getLogger("quiver.sender")

# SQS delivers at least once: the same message can arrive twice while the first copy
# is still being worked on, or just after it completed. Completed message ids are
# remembered this many at a time so such a copy is deleted, not delivered again.
RECENT_COMPLETED = 50_000

# Long-poll wait. Shorter than SQS's 20 s maximum so that a stop request is noticed
# within the drain deadline without abandoning a poll whose messages would then sit
# invisible for a whole visibility timeout.
POLL_WAIT = 5


@dataclass(slots=True)
class _Held:
    received: Received
    size: int
    extended_at: float


@dataclass(slots=True)
class SenderStats:
    received: int = 0
    completed: int = 0
    returned: int = 0
    duplicates: int = 0


class Sender:
    def __init__(
        self,
        *,
        intake: Intake,
        queue: Queue,
        handler: MessageHandler,
        completer: Completer,
        services: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
        on_start: Sequence[Callable[[asyncio.Event], Awaitable[None]]] = (),
        on_close: Sequence[Callable[[], Awaitable[None]]] = (),
        gate: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    ) -> None:
        # Awaited before each receive: returns while sending may go on (an operator's
        # emergency stop holds it; quiver.controls), or once `stop` is set.
        self._gate = gate
        self._services = services
        self._on_start = on_start
        self._on_close = on_close
        self._intake = intake
        self._queue = queue
        # Checked once: a runtime protocol check costs microseconds, on every completion.
        self._billed = queue if isinstance(queue, BilledReceives) else None
        self._handler = handler
        self._completer = completer
        self._held: dict[str, _Held] = {}  # by SQS message id
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._asking = 0  # messages the receivers' requests in progress may bring
        # Set while there is room for more messages; receivers wait on it when full.
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = SenderStats()
        completer.deadline_of = self._deadline_of

    def _deadline_of(self, message_id: str) -> float | None:
        """When a held message becomes visible again (monotonic), at the earliest: its
        receive or last extension was asked for no later than `extended_at`."""
        held = self._held.get(message_id)
        if held is None:
            return None
        return held.extended_at + int(self._intake.visibility_timeout)

    @property
    def in_hand(self) -> int:
        """Messages received and not yet completed or returned."""
        return len(self._held)

    @property
    def inflight(self) -> tuple[int, int]:
        """Messages held now (received, not finished) and their bytes."""
        return len(self._held), self._bytes

    def _has_room(self) -> bool:
        return (
            len(self._held) < self._intake.max_inflight_messages
            and self._bytes < self._intake.max_inflight_bytes
        )

    def _receive_room(self) -> int:
        """How many messages a receive may ask for now (0: wait for room).

        The room is counted net of what the other receivers' requests in progress may
        bring. A busy sender waits for room for a whole receive: one for the odd free
        slot bills a request for a message or two, where a whole one bills one for
        eight or ten (quiver.storage.sqs). A sender with nothing in hand asks at once.
        The wait leaves at most a quarter of the limit idle, so a small limit is not
        held up by one slow delivery."""
        if not self._has_room():
            return 0
        limit = self._intake.max_inflight_messages
        whole = self._whole_receive  # asks the queue: once per call, on every completion
        room = min(whole, limit - len(self._held) - self._asking)
        if room < min(whole, max(1, limit // 4)) and (self._held or self._asking):
            return 0
        return max(0, room)

    @property
    def _whole_receive(self) -> int:
        """The messages a receive asks for when there is room for any number."""
        return self._billed.receive_size(10) if self._billed is not None else 10

    async def run(self, stop: asyncio.Event) -> None:
        for start in self._on_start:
            await start(stop)  # before the first receive; each returns early on stop
        self._completer.start()
        visibility = int(self._intake.visibility_timeout)
        receivers = [
            asyncio.create_task(self._receive_loop(stop, visibility), name=f"receiver-{i}")
            for i in range(self._intake.receivers)
        ]
        heartbeat = asyncio.create_task(self._extend_loop(stop, visibility), name="heartbeat")
        services: list[asyncio.Task[None]] = [
            asyncio.create_task(service(stop)) for service in self._services
        ]
        await stop.wait()
        self._room.set()  # receivers waiting for room see the stop
        log.info("stopping: draining %d messages", len(self._held))
        deadline = time.monotonic() + self._intake.drain_deadline
        # Receivers finish their current poll (at most POLL_WAIT) so no message is
        # left invisible by an abandoned request; what they return is handled too.
        await asyncio.wait(receivers, timeout=max(0.0, deadline - time.monotonic()))
        for task in receivers:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        heartbeat.cancel()
        unfinished = [self._completer.receipt_of(h.received) for h in self._held.values()]
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        for close in self._on_close:
            await close()
        await self._completer.close()
        if services:
            await asyncio.wait(services, timeout=2.0)
        if unfinished:
            # Abandoned: visible again at once, for another task to deliver.
            try:
                await self._queue.change_visibility(unfinished, seconds=0)
            except StorageError as exc:
                log.warning("could not release %d messages: %s", len(unfinished), exc)
        log.info("stopped: %s", self.stats)

    async def _receive_loop(self, stop: asyncio.Event, visibility: int) -> None:
        while not stop.is_set():
            while not self._receive_room() and not stop.is_set():
                self._room.clear()
                await self._room.wait()
            if stop.is_set():
                break
            if self._gate is not None:
                await self._gate(stop)
                if stop.is_set():
                    break
            want = self._receive_room()
            if not want:
                continue  # others took the room while the gate was awaited
            # Before the request: the visibility SQS starts can only start later.
            asked = time.monotonic()
            self._asking += want
            failed: StorageError | None = None
            try:
                batch = await self._queue.receive(
                    max_messages=want, wait_seconds=POLL_WAIT, visibility=visibility
                )
            except StorageError as exc:
                batch, failed = [], exc
            finally:
                # No await from here until the batch is held, so the room stays counted.
                self._asking -= want
                if self._receive_room():
                    self._room.set()  # what this request did not bring, another may ask for
            if failed is not None:
                log.warning("receive failed: %s", failed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            duplicates = []
            for received in batch:
                self.stats.received += 1
                held = self._held.get(received.message_id)
                if held is not None:
                    # A second copy of a message in progress: only the newest receipt
                    # handle is sure to delete it, so the completion will use that one.
                    self._completer.use_receipt(received.message_id, received.receipt)
                    self.stats.duplicates += 1
                    continue
                if received.message_id in self._recent:
                    duplicates.append(received.receipt)
                    self.stats.duplicates += 1
                    continue
                size = len(received.body)
                self._held[received.message_id] = _Held(received.without_body(), size, asked)
                self._bytes += size
                task = asyncio.create_task(self._work(received))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if duplicates:
                try:
                    await self._queue.delete(duplicates)
                except StorageError as exc:
                    log.warning("could not delete %d duplicate copies: %s", len(duplicates), exc)

    async def _work(self, received: Received) -> None:
        message_id = received.message_id
        # The handler owns the message from here; keeping `received` in this frame
        # would keep its SQS body alive for the whole delivery.
        work = self._handler.handle(received)
        del received
        try:
            done = await work
        except Exception:
            # A bug must not kill the sender; the message returns after its timeout
            # and, if it keeps failing, SQS moves it to the DLQ (maxReceiveCount).
            log.exception("unexpected error on message %s", message_id)
            done = False
        held = self._held.pop(message_id, None)
        if held is not None:
            self._bytes -= held.size
        if done:
            self.stats.completed += 1
            self._recent[message_id] = None
            if len(self._recent) > RECENT_COMPLETED:
                self._recent.popitem(last=False)
        else:
            self.stats.returned += 1
        if self._receive_room():
            self._room.set()

    async def _extend_loop(self, stop: asyncio.Event, visibility: int) -> None:
        """Extend held messages at half their visibility so none lapses mid-delivery."""
        period = max(1.0, visibility / 4)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            now = time.monotonic()
            due = [h for h in self._held.values() if now - h.extended_at >= visibility / 2]
            if not due:
                continue
            try:
                await self._queue.change_visibility(
                    [self._completer.receipt_of(h.received) for h in due], seconds=visibility
                )
            except StorageError as exc:
                log.warning("visibility extension failed: %s", exc)
                continue
            for h in due:
                h.extended_at = now
