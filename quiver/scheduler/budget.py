"""Shared budgets: connection slots and send rates, keyed by throttle limit key.

A budget is shared by every ready queue whose traffic the same throttle rule
matches (see throttle.py). Each limit is cluster-wide: a rate is split evenly
(1/live tasks; see membership.py), a connection limit by `task_slots`, whole
connections that add up to the limit, some of them zero when the limit is below the
number of tasks.

Times come from an injected clock and are only ever compared with other readings
of it: nothing depends on where the clock starts (time.monotonic() starts near 0
at boot on Linux).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from typing import NamedTuple


class Seat(NamedTuple):
    """This task's place in the fleet: `rank` (0-based) among `tasks` live tasks, in
    the order every task sees (sorted task ids; see membership.py)."""

    rank: int = 0
    tasks: int = 1


SOLO = Seat()


def task_slots(limit: int, *, seat: tuple[int, int], key: tuple[str, ...]) -> int:
    """This task's connections of a cluster-wide `limit` split among the fleet.

    Every task gets limit // tasks; the remainder goes one each to `limit % tasks`
    consecutive ranks, starting at a rank drawn from the budget's key. The slots of
    all tasks add up to `limit` exactly: a limit of 10 among 20 tasks is one
    connection on 10 of them and none on the other 10 (never one on each, which
    would double the limit), and which 10 differs from one budget to the next, so no
    task carries every small limit. The key is hashed with CRC-32, the same in every
    process (Python's str hash is salted per process).
    """
    rank, tasks = seat
    tasks = max(1, tasks)
    base, extra = divmod(max(0, limit), tasks)
    if not extra:
        return base
    start = zlib.crc32("\x1f".join(key).encode()) % tasks
    return base + (1 if (rank - start) % tasks < extra else 0)


class ConnectionBudget:
    """At most `limit` open connections; waiters are woken in order on release.

    A server that says it has too many connections lowers the budget below its
    limit for a while (`lower`): the connections it took keep working, no new one
    opens past them until `until`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0
        # Connections counted in `open` that decided to close (a lowered limit).
        self.retiring = 0
        self._waiters: list[Callable[[], None]] = []
        self._lowered: tuple[int, float] | None = None  # (ceiling, until)
        # Called when someone starts waiting: holders' idle connections look again
        # whether to make room (a site's budget, shared by queues of several sources).
        self.nudges: set[Callable[[], None]] = set()

    def has_room(self, effective_limit: int) -> bool:
        return self.open < effective_limit

    def try_acquire(self, effective_limit: int) -> bool:
        if self.open >= effective_limit:
            return False
        self.open += 1
        self.peak = max(self.peak, self.open)
        return True

    def lower(self, ceiling: int, *, until: float) -> None:
        """At most `ceiling` (at least 1) open connections until `until`."""
        ceiling = max(1, ceiling)
        if self._lowered is not None:
            ceiling = min(ceiling, self._lowered[0])
        self._lowered = (ceiling, until)

    def ceiling(self, effective_limit: int, now: float) -> int:
        """`effective_limit`, or lower while a `lower` holds."""
        lowered = self._lowered
        if lowered is None:
            return effective_limit
        if now >= lowered[1]:
            self._lowered = None
            return effective_limit
        return min(effective_limit, lowered[0])

    def others_waiting(self, me: Callable[[], None]) -> bool:
        """Someone other than `me` waits for a slot."""
        return any(w != me for w in self._waiters)

    def wait(self, callback: Callable[[], None]) -> None:
        """Call `callback` once a slot is released (the caller retries try_acquire)."""
        if callback not in self._waiters:
            self._waiters.append(callback)
            for nudge in list(self.nudges):
                nudge()

    def release(self) -> None:
        self.open -= 1
        self.wake()

    def hand_over(self, other: ConnectionBudget, *, retiring: bool) -> None:
        """Count one open connection (closing if `retiring`) in `other` instead: a reload
        changed the rule that matches it. Moved, not released and re-acquired, so the
        connection keeps working and the new limit is not doubled."""
        self.open -= 1
        other.open += 1
        if retiring:
            self.retiring -= 1
            other.retiring += 1

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()


class RateLimiter:
    """Paces sends at `per_second` (GCRA).

    Pacing rather than bursting is what receiving MXes reward. A send that wakes
    late may catch up by at most one interval, so timer lateness does not lower
    the rate, and no window of T seconds carries more than rate*T + 1 sends. A new
    limiter is rested, as one idle for long: its first two sends may go at once.
    """

    def __init__(self, per_second: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        # When the next send is due; None until the first (rested, whatever the clock's
        # origin: a 0.0 here would be "due at boot").
        self._next: float | None = None

    def repace(self, per_second: float) -> None:
        """A new rate (policy reload): a higher one is not held to the old interval."""
        if per_second > self.per_second and self._next is not None:
            self._next = min(self._next, self._clock())
        self.per_second = per_second

    async def acquire(self, share: float = 1.0) -> None:
        while True:
            if self.try_acquire(share):
                return
            assert self._next is not None
            await asyncio.sleep(max(0.0, self._next - self._clock()))

    def due(self) -> bool:
        """Whether a send would be allowed now (nothing is taken)."""
        return self._next is None or self._clock() >= self._next

    def try_acquire(self, share: float = 1.0) -> bool:
        """Take a send now if the pace allows one; never waits."""
        interval = 1.0 / max(1e-9, self.per_second * share)
        now = self._clock()
        due = now - interval if self._next is None else self._next
        if now < due:
            return False
        self._next = max(due, now - interval) + interval
        return True


class Budgets:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._connections: dict[tuple[str, ...], ConnectionBudget] = {}
        self._rates: dict[tuple[str, ...], RateLimiter] = {}
        # Cluster-wide rates the adaptive engine set per (source, provider), messages
        # per second: a queue's max_rate is paced at the lower of the two.
        self.adapted: dict[tuple[str, str], float] = {}

    def connections(self, key: tuple[str, ...], limit: int) -> ConnectionBudget:
        budget = self._connections.get(key)
        if budget is None:
            budget = self._connections[key] = ConnectionBudget(limit)
        budget.limit = limit  # a policy reload may change it
        return budget

    def rate(self, key: tuple[str, ...], per_second: float) -> RateLimiter:
        limiter = self._rates.get(key)
        if limiter is None:
            limiter = self._rates[key] = RateLimiter(per_second, clock=self.clock)
        limiter.repace(per_second)  # a policy reload may change it
        return limiter
