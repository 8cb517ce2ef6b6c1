"""Whether the sender's event loop still runs: a task on the loop ticks every
`interval` seconds; a reader on another thread calls the loop stalled when the
last tick is older than `stall` seconds.

A blocked loop (a blocking call, a CPU-bound bug, a deadlock) cannot answer a
health check itself, so the check must be read elsewhere (status/server.py
serves it from its own thread). The clock is injected and only differences of
its readings are used, whatever its origin. A float attribute written by one
thread and read by another needs no lock in CPython.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

TICK_INTERVAL = 1.0
# ECS's health check (cdk/sender_service.py) fails after this, then its retries:
# long enough that a slow garbage collection or a burst of DKIM signing on the loop
# is not taken for a hang, short enough that a wedged task is replaced in minutes.
DEFAULT_STALL = 30.0


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    # Seconds since the loop last ticked; None before the first tick.
    age: float | None
    reason: str


class LoopBeat:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 interval: float = TICK_INTERVAL, stall: float = DEFAULT_STALL) -> None:
        if stall <= interval:
            raise ValueError(f"the stall bound ({stall:g} s) must exceed the tick "
                             f"interval ({interval:g} s)")
        self._clock = clock
        self.interval = interval
        self.stall = stall
        self.last: float | None = None

    def tick(self) -> None:
        self.last = self._clock()

    def age(self) -> float | None:
        last = self.last
        return None if last is None else max(0.0, self._clock() - last)

    def verdict(self) -> Verdict:
        age = self.age()
        if age is None:
            return Verdict(False, None, "the event loop has not ticked yet")
        if age > self.stall:
            return Verdict(False, age, f"the event loop last ticked {age:.1f} s ago "
                                       f"(bound {self.stall:g} s)")
        return Verdict(True, age, f"the event loop ticked {age:.1f} s ago")

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` (on the loop being watched)."""
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
