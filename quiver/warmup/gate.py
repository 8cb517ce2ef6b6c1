"""The warm-up cap check: may this source take N more recipients for provider P today?

Each sender reserves blocks of a day's cap from the shared store (1/20 of the cap, at
least the recipients in hand) and spends them locally, so most checks cost no request
and across senders a warming source is given at most its cap. A block left unspent
when the day ends is lost to that day (the source carries a little less than its cap);
a sender that stops gives its unspent blocks back.

Outcomes of the attempts made from warming sources (attempted, bounced, deferred) are
added up here and written to the store every `flush_every` seconds: they decide the
next day's advance or hold (days.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quiver.delivery import Attempt
from quiver.policy.warmup import WarmupPolicy
from quiver.storage.base import StorageError
from quiver.storage.warmup import DayCounts, Plan, WarmupStore, provider_key
from quiver.warmup.days import DayKeeper, utc_date

log = logging.getLogger("quiver.warmup")

# A sender reserves this share of a day's cap at a time: small enough that the senders
# of a fleet share a small cap, large enough that a big one costs few requests.
BLOCK_SHARE = 20
# Outcomes are written this often (and when the sender stops): a day's decision reads
# them the next day, so a few seconds' delay changes nothing.
FLUSH_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class Capped:
    """A source that may not take a delivery today, and why (for the deferral reply)."""

    source: str
    why: str


class WarmupGate:
    def __init__(self, *, policy: WarmupPolicy, store: WarmupStore, days: DayKeeper,
                 clock: Callable[[], float] = time.time,
                 flush_every: float = FLUSH_EVERY) -> None:
        self._policy = policy
        self._store = store
        self.days = days
        self._clock = clock
        self._flush_every = flush_every
        # (source, provider key, date) → recipients reserved here and not yet used.
        self._allowance: dict[tuple[str, str, str], int] = defaultdict(int)
        # Caps the store said were used up: not asked again that date.
        self._spent: set[tuple[str, str, str]] = set()
        self._outcomes: dict[tuple[str, str], DayCounts] = {}

    def warming(self, source: str) -> bool:
        return source in self._policy.sources

    async def take(self, source: str, provider: str | None, count: int) -> Capped | None:
        """Take `count` of today's cap of (source, provider); None when taken (or the
        source has no cap), else why not. Give back what goes unused (`give_back`)."""
        plan = self._policy.sources.get(source)
        if plan is None:
            return None
        today = utc_date(self._clock())
        try:
            day = await self.days.day(source, today)
        except StorageError as exc:
            # Not knowing the day, the cap is unknown: the rest of the pool carries it.
            log.warning("warm-up of %s: day unknown, source skipped: %s", source, exc)
            return Capped(source, f"warm-up day of {source} unknown: {exc}")
        cap = plan.cap(provider, day)
        if cap is None:
            return None
        key = (source, provider_key(provider), today.isoformat())
        if self._allowance[key] < count and key not in self._spent:
            want = max(count - self._allowance[key], cap // BLOCK_SHARE, 1)
            try:
                granted = await self._store.reserve(
                    source=source, provider=key[1], date=key[2], want=want,
                    plan=Plan(cap=cap, day=day, template=plan.template))
            except StorageError as exc:
                log.warning("warm-up of %s: cap not reserved, source skipped: %s", source, exc)
                return Capped(source, f"warm-up cap of {source} not reserved: {exc}")
            self._allowance[key] += granted
            if granted < want:
                self._spent.add(key)
        if self._allowance[key] < count:
            return Capped(source, f"{source} has used its warm-up cap of {cap} for "
                                  f"{provider or 'other providers'} today (day {day}, "
                                  f"template {plan.template})")
        self._allowance[key] -= count
        return None

    def give_back(self, source: str, provider: str | None, count: int) -> None:
        """Recipients taken and never attempted (rerouted, held): back to this sender's
        allowance, for its next delivery."""
        if source not in self._policy.sources:
            return
        key = (source, provider_key(provider), utc_date(self._clock()).isoformat())
        # Taken on an earlier date (a delivery across midnight): today's count never
        # had them, so they do not come back into it.
        if key in self._allowance:
            self._allowance[key] += count

    def record(self, source: str, attempts: Sequence[Attempt]) -> None:
        """The outcomes of a warming source's attempts, toward its day's rates."""
        if source not in self._policy.sources:
            return
        tried = [a for a in attempts if a.counts]
        if not tried:
            return
        counts = DayCounts(attempts=len(tried),
                           bounced=sum(1 for a in tried if a.reply.code >= 500),
                           deferred=sum(1 for a in tried if 400 <= a.reply.code < 500))
        key = (source, utc_date(self._clock()).isoformat())
        self._outcomes[key] = self._outcomes.get(key, DayCounts()) + counts

    async def flush(self) -> None:
        """Write the outcomes added up so far; what fails to write is kept for next time."""
        pending, self._outcomes = self._outcomes, {}
        for (source, date), counts in pending.items():
            try:
                await self._store.add_outcomes(source=source, date=date, counts=counts)
            except StorageError as exc:
                log.warning("warm-up outcomes of %s not written (kept): %s", source, exc)
                self._outcomes[(source, date)] = self._outcomes.get(
                    (source, date), DayCounts()) + counts

    async def run(self, stop: asyncio.Event) -> None:
        """A sender service: flush every `flush_every` seconds until `stop` (the last
        flush is `close`'s, after the last delivery)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._flush_every)
            if not stop.is_set():
                await self.flush()

    async def close(self) -> None:
        """Flush the outcomes and give today's unspent reservations back to the store."""
        await self.flush()
        today = utc_date(self._clock()).isoformat()
        for (source, provider, date), left in list(self._allowance.items()):
            if date == today and left > 0:
                try:
                    await self._store.release(source=source, provider=provider, date=date,
                                              count=left)
                except StorageError as exc:
                    log.warning("warm-up: %d of %s's cap not given back: %s", left, source, exc)
            self._allowance[(source, provider, date)] = 0
