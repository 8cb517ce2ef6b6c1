"""Keep a running sender's key ring current, so a rotation needs no restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from quiver.returnpath.keys import KeyRing, KeyRingError

log = logging.getLogger("quiver.returnpath")

# A rotated ring reaches every sender within this long. Verifiers must know a new
# key before it signs: `quiver return-path rotate --activate-in` leaves them this
# much and more.
REFRESH_INTERVAL = 300.0


class KeyRingRefresher:
    """Reads the ring every `interval` seconds (off the event loop: Secrets Manager is
    a blocking call) and hands each good one to `apply`. A read that fails keeps the
    ring in use: the keys it holds still sign and verify."""

    def __init__(self, load: Callable[[], KeyRing], apply: Callable[[KeyRing], None], *,
                 interval: float = REFRESH_INTERVAL) -> None:
        self._load = load
        self._apply = apply
        self.interval = interval

    async def refresh(self) -> bool:
        try:
            ring = await asyncio.get_running_loop().run_in_executor(None, self._load)
        except KeyRingError as exc:
            log.warning("return-path keys not refreshed, the current ring stays: %s", exc)
            return False
        self._apply(ring)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
            if not stop.is_set():
                await self.refresh()


class CachedRing:
    """The ring for a process without an event loop to run a refresher (a Lambda):
    read at first use, then again on a call at least `interval` after the last read.
    A read that fails keeps the ring in use, as the refresher does; only the first
    read's failure raises."""

    def __init__(self, load: Callable[[], KeyRing], *, interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self.interval = interval
        self._clock = clock
        self._ring: KeyRing | None = None
        self._read_at = 0.0

    def __call__(self) -> KeyRing:
        now = self._clock()
        if self._ring is None:
            self._ring, self._read_at = self._load(), now
        elif now - self._read_at >= self.interval:
            self._read_at = now
            try:
                self._ring = self._load()
            except KeyRingError as exc:
                log.warning("return-path keys not refreshed, the current ring stays: %s", exc)
        return self._ring
