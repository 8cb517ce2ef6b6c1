"""Durable completion: events accepted first, then re-enqueues, then the delete.

A message is deleted from the outbound queue only after the events of its
recipients were accepted by the events queue and its still-pending recipients
were re-enqueued (ARCHITECTURE.md, durability). A completion that keeps its
message (`release_after`: its pending recipients could not be re-enqueued) has
its events accepted the same way, and its message hidden instead of deleted, to
come back for those recipients. Completions are batched across
messages so one SQS request carries many: that is where most of the per-message
AWS cost goes.

Once a flush's messages are deleted, each before its visibility deadline, the
flush is confirmed in the finals table with the ids of its messages at risk of a
second final event; the export then claims only those ids' final events
(quiver.storage.finals has the rules and why they keep final events exactly-once).
Everything this sends to the outbound queue or its DLQ carries COPY_ATTRIBUTE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from quiver.events import FINAL_EVENTS, Record
from quiver.storage.base import (
    COPY_ATTRIBUTE,
    EventSink,
    Outgoing,
    Queue,
    Received,
    StorageError,
    Suppression,
)

log = logging.getLogger("quiver.sender")

# A flush costs the same whatever it carries: an events-queue message, an S3 object
# per event type at the export, a confirmation in the finals table. Waiting up to
# MAX_DELAY for a fuller one holds each message that much longer (its delivery is
# done; only its delete waits), and a busy sender fills MAX_BATCH sooner.
MAX_BATCH = 500
MAX_DELAY = 0.2


@dataclass(slots=True)
class Completion:
    received: Received
    records: list[Record] = field(default_factory=list)
    retry: list[Outgoing] = field(default_factory=list)  # to the outbound queue
    dead: list[Outgoing] = field(default_factory=list)  # to the DLQ
    # Suppression-list entries its outcomes call for (hard bounces), written once
    # the records are durable.
    suppress: list[Suppression] = field(default_factory=list)
    # None: the message is deleted once the rest is durable. Seconds: it is kept, its
    # pending recipients still in it, and visible again that many seconds later.
    release_after: int | None = None
    future: asyncio.Future[None] | None = None


class Completer:
    def __init__(
        self,
        *,
        queue: Queue,
        dlq: Queue,
        sink: EventSink,
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY,
        on_durable: Callable[[Sequence[Record]], None] | None = None,
        confirm: Callable[[str, Collection[str]], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_durable = on_durable
        # FinalsStore.confirm (None: nothing confirmed, every final event claimed).
        self._confirm = confirm
        self._clock = clock
        # When a held message's visibility lapses, on `clock` (None: unknown, so its
        # flush is not confirmed); the engine that holds the messages sets it.
        self.deadline_of: Callable[[str], float | None] | None = None
        # Confirmations being written: off the flush path, which they must not slow.
        self._confirming: set[asyncio.Task[None]] = set()
        self._queue = queue
        self._dlq = dlq
        self._sink = sink
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._pending: list[Completion] = []
        self._receipts: dict[str, str] = {}  # newest receipt handle by SQS message id
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def use_receipt(self, message_id: str, receipt: str) -> None:
        """A newer copy of an in-progress message arrived: delete with its handle."""
        self._receipts[message_id] = receipt

    def receipt_of(self, received: Received) -> str:
        return self._receipts.get(received.message_id, received.receipt)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completer")

    async def complete(self, completion: Completion) -> None:
        """Returns once the completion is durable; raises StorageError if it is not."""
        if self._closed:
            raise StorageError("completer is closed")
        completion.future = asyncio.get_running_loop().create_future()
        self._pending.append(completion)
        if len(self._pending) >= self._max_batch:
            self._wake.set()
        await completion.future

    async def _run(self) -> None:
        while not self._closed or self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._max_delay):
                    await self._wake.wait()
            self._wake.clear()
            if self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[
                    self._max_batch:
                ]
                await self.flush(batch)

    async def flush(self, batch: Sequence[Completion]) -> None:
        producer = uuid.uuid4().hex
        confirmable = False
        try:
            records = [r for c in batch for r in c.records]
            risky = {str(r["id"]) for c in batch if self._at_risk(c) for r in c.records}
            await self._sink.publish(records, batch_id=producer)
            dead = [_marked(m) for c in batch for m in c.dead]
            if dead:
                await self._dlq.send(dead)
            retry = [_marked(m) for c in batch for m in c.retry]
            if retry:
                await self._queue.send(retry)
            deleted = [c for c in batch if c.release_after is None]
            if deleted:
                await self._queue.delete([self.receipt_of(c.received) for c in deleted])
            confirmable = self._in_time(deleted) and any(
                r["event"] in FINAL_EVENTS for r in records)
            await self._release([c for c in batch if c.release_after is not None])
        except StorageError as exc:
            # Nothing is lost: undeleted messages come back after their visibility
            # timeout; records already accepted may then be written again.
            log.warning("completion of %d messages failed: %s", len(batch), exc)
            for c in batch:
                if c.future is not None and not c.future.done():
                    c.future.set_exception(StorageError(str(exc)))
            return
        finally:
            for c in batch:
                self._receipts.pop(c.received.message_id, None)
        if self._on_durable is not None:
            self._on_durable(records)
        for c in batch:
            if c.future is not None and not c.future.done():
                c.future.set_result(None)
        if confirmable and self._confirm is not None:
            task = asyncio.create_task(self._confirm_flush(self._confirm, producer, risky))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    @staticmethod
    async def _confirm_flush(confirm: Callable[[str, Collection[str]], Awaitable[None]],
                             producer: str, risky: Collection[str]) -> None:
        try:
            await confirm(producer, risky)
        except StorageError as exc:
            # Unconfirmed, the export claims every final event of the flush: the cost
            # of before, never a duplicate.
            log.warning("flush %s not confirmed: %s", producer, exc)

    async def confirmations(self) -> None:
        """Until the confirmations started so far are written (or failed)."""
        while self._confirming:
            await asyncio.gather(*self._confirming)

    def _at_risk(self, c: Completion) -> bool:
        """Whether another final event for a recipient of this completion can exist
        (quiver.storage.finals, the cases 1 to 3)."""
        return (c.received.receive_count > 1 or c.received.copy
                or c.received.message_id in self._receipts  # a second copy came in
                or c.release_after is not None or bool(c.dead))

    def _in_time(self, deleted: Sequence[Completion]) -> bool:
        """Whether every deletion (just returned) came before its message's visibility
        deadline, so no other receive of it can have happened."""
        if self.deadline_of is None:
            return False
        now = self._clock()
        for c in deleted:
            deadline = self.deadline_of(c.received.message_id)
            if deadline is None or now >= deadline:
                return False
        return True

    async def _release(self, kept: Sequence[Completion]) -> None:
        """Hide each kept message until its `release_after`. A failure is no failure of
        the completion: its events are durable, and the message comes back after the
        visibility it has, for its pending recipients all the same (sooner than asked:
        perhaps before the export has claimed its finals, see MessageHandler)."""
        by_delay: dict[int, list[str]] = defaultdict(list)
        for c in kept:
            assert c.release_after is not None
            by_delay[c.release_after].append(self.receipt_of(c.received))
        for seconds, receipts in by_delay.items():
            try:
                await self._queue.change_visibility(receipts, seconds=seconds)
            except StorageError as exc:
                log.warning("could not hide %d kept messages for %ds: %s", len(receipts),
                            seconds, exc)

    async def close(self) -> None:
        """Flush what is pending and stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.confirmations()


def _marked(message: Outgoing) -> Outgoing:
    """`message` as quiver's own copy (COPY_ATTRIBUTE)."""
    return replace(message, attributes={**message.attributes, COPY_ATTRIBUTE: "1"})
