"""Keeps a sender's `ActiveControls` current: one read of the controls table every
`[controls] poll` seconds.

A sender reads the table once before it receives anything (`load`), so a task that
autoscaling starts during an emergency stop sends nothing: the stop lives in the
table, not in the task count. If that first read fails it is retried until it
succeeds or the task is stopped: a sender that cannot learn of a stop does not
send. A later read that fails keeps the last set (expiry is still checked against
the clock) and is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

from quiver.adaptive.state import RateState
from quiver.controls.active import ActiveControls
from quiver.storage.base import ControlStore, RateStore, StorageError

log = logging.getLogger("quiver.controls")

WARNING_INTERVAL = 60.0


class ControlPoller:
    def __init__(self, store: ControlStore, controls: ActiveControls, *,
                 interval: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic,
                 rates: RateStore | None = None,
                 on_rates: Callable[[list[RateState]], None] | None = None) -> None:
        self._store = store
        # The adaptive rates beside the controls (same table), read on the same poll
        # and handed to `on_rates` (the adaptive engine paces the throttles by them).
        self._rates = rates
        self._on_rates = on_rates
        self.controls = controls
        # Read at each wait: a policy reload changes it.
        self._interval = interval
        self._clock = clock
        self._warned_at = -math.inf
        self.reads = 0
        self.failures = 0

    async def read(self) -> bool:
        """One read, applied; False (logged, rate-limited) if the table failed."""
        try:
            found = await self._store.all()
        except StorageError as exc:
            self._failed("controls table unreadable (%s): keeping the %d controls last read",
                         exc, len(self.controls.controls()))
            self.controls.refresh()
            return False
        self.reads += 1
        self.controls.replace(found)
        if self._rates is not None and self._on_rates is not None:
            try:
                self._on_rates(await self._rates.rates())
            except StorageError as exc:
                self._failed("adaptive rates unreadable (%s): keeping the rates last read",
                             exc)
        return True

    def _failed(self, message: str, *args: object) -> None:
        """Count a failed read; warn at most once per WARNING_INTERVAL (a clock that
        went back warns again)."""
        self.failures += 1
        now = self._clock()
        if now - self._warned_at >= WARNING_INTERVAL or now < self._warned_at:
            self._warned_at = now
            log.warning(message, *args)

    async def load(self, stop: asyncio.Event) -> None:
        """Before the first receive: read until it succeeds (or `stop`)."""
        while not stop.is_set():
            if await self.read():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval())
            if not stop.is_set():
                await self.read()
