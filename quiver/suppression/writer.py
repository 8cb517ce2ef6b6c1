"""Entries the sender adds to the suppression list (synchronous hard bounces).

An entry is handed over only once the bounce event that caused it is durable
(the message's completion), and written behind delivery: in batches of up to
25 (one BatchWriteItem), never on a message's path. A failed write is retried
with backoff; what still fails is logged with every address (the `bounced`
events carry them too, so nothing needed to rebuild it is lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from quiver.events import rfc3339_ms
from quiver.storage.base import ALL_TENANTS, StorageError, Suppression, SuppressionStore
from quiver.suppression.check import SuppressionCheck

log = logging.getLogger("quiver.suppression")

WRITE_BATCH = 25  # BatchWriteItem's limit
# Entries waiting for the table while it is down; past this the newest are logged
# and dropped (each has its `bounced` event), so an outage cannot grow memory.
MAX_PENDING = 100_000
RETRIES = 5
BACKOFF = 0.5  # seconds, doubled per retry
MAX_SOURCE = 512


def hard_bounce_entry(*, rcpt: str, tenant: str | None, message_id: str, at: float,
                      reply: str) -> Suppression:
    """The entry a synchronous hard bounce adds: the message's tenant (global for a
    message without one, the only scope such a message is checked against)."""
    source = f"bounced {message_id} at {rfc3339_ms(at)}: {reply}"
    return Suppression(
        address=rcpt.lower(), reason="hard_bounce", created_at=at,
        tenant=tenant if tenant is not None else ALL_TENANTS, source=source[:MAX_SOURCE],
    )


class SuppressionWriter:
    def __init__(
        self,
        store: SuppressionStore,
        *,
        check: SuppressionCheck | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._check = check
        self._pending: list[Suppression] = []
        self._wake = asyncio.Event()
        self._sleep = sleep
        self.written = 0
        self.dropped = 0

    def add(self, entries: Sequence[Suppression]) -> None:
        """Queue entries for writing (returns at once) and put them in force in this
        task's cache."""
        for entry in entries:
            if self._check is not None:
                self._check.learn(entry)
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                log.error("suppression not written (%d waiting): %s %s %s", MAX_PENDING,
                          entry.tenant, entry.address, entry.source)
                continue
            self._pending.append(entry)
        if self._pending:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write what arrives until `stop`; `close` writes the rest."""
        while not stop.is_set():
            waiter = asyncio.ensure_future(self._wake.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopped.cancel()
            self._wake.clear()
            if not stop.is_set():
                await self.flush()

    async def close(self) -> None:
        await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:WRITE_BATCH], self._pending[WRITE_BATCH:]
            await self._write(batch)

    async def _write(self, batch: list[Suppression]) -> None:
        for attempt in range(RETRIES):
            try:
                await self._store.put_many(batch)
            except StorageError as exc:
                log.warning("suppression write failed (try %d of %d): %s", attempt + 1,
                            RETRIES, exc)
                if attempt + 1 < RETRIES:
                    await self._sleep(BACKOFF * 2**attempt)
                continue
            self.written += len(batch)
            return
        self.dropped += len(batch)
        for entry in batch:
            log.error("suppression not written after %d tries: %s %s %s", RETRIES,
                      entry.tenant, entry.address, entry.source)
