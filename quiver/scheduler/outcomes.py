"""What a ready queue's recent attempts came to, for the live status: recipients
delivered, deferred and bounced over the last few minutes, and the last failure
at each site.

Counts sit in fixed buckets of `BUCKET` seconds on the scheduler's clock; a window
is the last `BUCKETS` of them, so a rate follows what a destination does now (a
deferral storm shows within a minute and fades within WINDOW) without keeping one
entry per attempt. Times are only compared with other readings of the same clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quiver.delivery import Attempt

BUCKET = 60.0
BUCKETS = 5
WINDOW = BUCKET * BUCKETS
# Sites remembered for their last error: each destination a task ever failed at
# would otherwise stay in memory for the task's life.
MAX_SITES = 10_000
# A remote server's reply text is bounded before it is kept and shown.
MAX_TEXT = 300


@dataclass(frozen=True, slots=True)
class Counts:
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0

    @property
    def total(self) -> int:
        return self.delivered + self.deferred + self.bounced

    @property
    def deferral_rate(self) -> float:
        """Deferred recipients over all recipients with an outcome (0 when none)."""
        return self.deferred / self.total if self.total else 0.0


class OutcomeWindow:
    """Recipients' outcomes at one ready queue over the last WINDOW seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (bucket index, delivered, deferred, bounced), oldest first.
        self._buckets: list[list[int]] = []

    def add(self, attempts: Sequence[Attempt]) -> None:
        bucket = self._bucket(int(self._clock() // BUCKET))
        for attempt in attempts:
            reply = attempt.reply
            bucket[1 if reply.positive else 3 if reply.permanent else 2] += 1

    def _bucket(self, index: int) -> list[int]:
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0, 0])
            self._expire(index)
        return self._buckets[-1]

    def _expire(self, index: int) -> None:
        oldest = index - BUCKETS + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.pop(0)

    def counts(self) -> Counts:
        self._expire(int(self._clock() // BUCKET))
        return Counts(
            delivered=sum(b[1] for b in self._buckets),
            deferred=sum(b[2] for b in self._buckets),
            bounced=sum(b[3] for b in self._buckets),
        )


@dataclass(frozen=True, slots=True)
class SiteError:
    """The last failed attempt at a site: when (the scheduler's clock), from which
    source, and what was said."""

    at: float
    source: str | None
    code: int
    enhanced: str | None
    text: str


class LastErrors:
    """The last failure per site, for the most recently failing MAX_SITES sites."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 max_sites: int = MAX_SITES) -> None:
        self._clock = clock
        self._max = max_sites
        self._by_site: OrderedDict[str, SiteError] = OrderedDict()

    def add(self, site: str, attempts: Sequence[Attempt]) -> None:
        failed = next((a for a in reversed(attempts) if not a.reply.positive), None)
        if failed is None:
            return
        reply = failed.reply
        self._by_site[site] = SiteError(
            at=self._clock(), source=failed.path.source, code=reply.code,
            enhanced=reply.enhanced, text=reply.text[:MAX_TEXT])
        self._by_site.move_to_end(site)
        while len(self._by_site) > self._max:
            self._by_site.popitem(last=False)

    def get(self, site: str) -> SiteError | None:
        return self._by_site.get(site)

    def items(self) -> list[tuple[str, SiteError]]:
        return list(self._by_site.items())
