"""Cluster share: each sender task enforces 1/N of every throttle, N = live tasks.

Tasks heartbeat into a table (one item per task, refreshed every `interval`,
considered dead after `stale`; DynamoDB's is `dynamo.DynamoMembership`). Each
heartbeat also reads the live tasks' ids: a task's rank among them (sorted, so
every task sees the same order) decides which tasks hold the remainder of a
connection limit that does not divide evenly (scheduler.budget.task_slots), and
which hold none of a limit below N. Error bound, stated in the README: in steady
state the cluster-wide rate equals the limit and connections are at most the
limit. When a task joins, the others learn of it within one interval, so for at
most `interval` seconds the cluster can exceed a limit by one task's share
(limit/N, rounded up to a connection). A task counts the
live tasks once before its intake starts (`join`), so it does not send at a
whole limit while it is one of N; if the table does not answer within one
interval it starts anyway, at the last known share (1/1 for a new task) until
an answer comes. When a task dies, its share goes unused for at most `stale`
seconds: the limit is under-used, never exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

log = logging.getLogger("quiver.sender")


class FixedShare:
    """A fixed share: a single task (no fleet table), or tests."""

    def __init__(self, tasks: int = 1, *, rank: int = 0) -> None:
        self.tasks = max(1, tasks)
        self.rank = min(max(0, rank), self.tasks - 1)

    def share(self) -> float:
        return 1.0 / self.tasks

    def position(self) -> tuple[int, int]:
        """(rank, tasks): this task's place in the order every task sees."""
        return self.rank, self.tasks

    async def join(self, stop: asyncio.Event) -> None:
        """A fixed share is known from the start."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class HeartbeatMembership(FixedShare, ABC):
    """The heartbeat schedule; a store supplies one heartbeat and the leaving."""

    def __init__(self, *, task_id: str, interval: float = 10.0, stale: float = 30.0) -> None:
        super().__init__(1)
        self.task_id = task_id
        self.interval = interval
        self.stale = stale
        self._beating: asyncio.Task[None] | None = None

    @abstractmethod
    async def beat(self) -> Sequence[str]:
        """Record this task's heartbeat; return the live tasks' ids (this one's
        included)."""

    @abstractmethod
    async def leave(self) -> None:
        """Remove this task's heartbeat."""

    async def join(self, stop: asyncio.Event) -> None:
        # Without this a new task would enforce whole limits (1/1) until its first
        # heartbeat, on top of the shares of the tasks already running. Bounded by one
        # interval (an unreachable table must not hold a starting task for the client's
        # retries) and by `stop`; a beat that answers later still sets the share.
        beat = self._start_beat()
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({beat, stopped}, timeout=self.interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not beat.done() and not stop.is_set():
            log.warning("membership: no heartbeat answer within %g s; a share of 1/%d "
                        "until one comes", self.interval, self.tasks)

    def _start_beat(self) -> asyncio.Task[None]:
        """The heartbeat in progress, or a new one: one call at a time to a slow table."""
        if self._beating is None or self._beating.done():
            self._beating = asyncio.create_task(self._beat(), name="membership heartbeat")
        return self._beating

    async def _beat(self) -> None:
        try:
            live = sorted(set(await self.beat()) | {self.task_id})
        except Exception as exc:
            # Keep the last known share: a table hiccup must not stop delivery.
            log.warning("membership heartbeat failed: %s", exc)
            return
        tasks = len(live)
        if tasks != self.tasks:
            log.info("live sender tasks: %d (this task enforces 1/%d of each limit)",
                     tasks, tasks)
        # Rank and count change together: a reader never sees a rank past the count.
        self.rank, self.tasks = live.index(self.task_id), tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat every `interval` after `join`, then leave the table on stop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            if not stop.is_set():
                await self._start_beat()
        if self._beating is not None and not self._beating.done():
            # A heartbeat written after `leave` would list this task for `stale` seconds
            # more (its share unused, never exceeded): give it a moment to land first.
            await asyncio.wait({self._beating}, timeout=2.0)
        with contextlib.suppress(Exception):
            await self.leave()
