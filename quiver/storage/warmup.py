"""Warm-up counts shared by every sender: how many recipients each warming source has
been given today per provider (reserved against its cap), what its attempts came to
(for the day's advance or hold), and the day it is on.

`WarmupStore` is the interface; `MemoryWarmup` the in-memory one for unit tests and
`quiver.storage.dynamo_warmup.DynamoWarmup` the controls table's. Dates are UTC
calendar dates ("YYYY-MM-DD"): a cap is per day, whatever the sender's time zone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

# The provider key of destinations that match no provider.
NO_PROVIDER = "-"


def provider_key(provider: str | None) -> str:
    return provider if provider else NO_PROVIDER


@dataclass(frozen=True, slots=True)
class DayCounts:
    """A warming source's attempts on one date, and how many were bounced (5xx) or
    deferred (4xx)."""

    attempts: int = 0
    bounced: int = 0
    deferred: int = 0

    def __add__(self, other: DayCounts) -> DayCounts:
        return DayCounts(self.attempts + other.attempts, self.bounced + other.bounced,
                         self.deferred + other.deferred)

    def bounce_rate(self) -> float:
        return self.bounced / self.attempts if self.attempts else 0.0

    def deferral_rate(self) -> float:
        return self.deferred / self.attempts if self.attempts else 0.0


@dataclass(frozen=True, slots=True)
class DayState:
    """Where a source's warm-up stands: on `as_of` (a date) it is on warm-up day `day`;
    `why` says why the last decision held (empty after an advance)."""

    day: int
    as_of: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class CapUse:
    """One (source, provider) cap on one date: what was taken of it, and the day and
    template it came from (for the status)."""

    source: str
    provider: str
    date: str
    taken: int
    cap: int
    day: int
    template: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reservation is against: the cap, and the warm-up day and template that
    set it (kept beside the count for `quiver status`)."""

    cap: int
    day: int
    template: str


class WarmupStore(Protocol):
    async def reserve(self, *, source: str, provider: str, date: str, want: int,
                      plan: Plan) -> int:
        """Take up to `want` of the date's `plan.cap` for (source, provider): the number
        granted (0 when the cap is used up). All takers together never exceed it."""
        ...

    async def release(self, *, source: str, provider: str, date: str, count: int) -> None:
        """Give back `count` taken and not used (a sender that stops)."""
        ...

    async def used(self, *, source: str, date: str) -> dict[str, int]:
        """What was taken of each provider's cap on the date."""
        ...

    async def add_outcomes(self, *, source: str, date: str, counts: DayCounts) -> None: ...

    async def outcomes(self, *, source: str, date: str) -> DayCounts: ...

    async def state(self, *, source: str) -> DayState | None: ...

    async def today(self, *, date: str) -> tuple[list[CapUse], dict[str, DayState]]:
        """Every cap taken from on the date, and every source's state (the status)."""
        ...

    async def put_state(self, *, source: str, state: DayState,
                        expected: DayState | None) -> bool:
        """Store `state` if the stored one is still `expected` (None: none stored); False
        when another sender moved it first."""
        ...


class MemoryWarmup:
    def __init__(self) -> None:
        self.taken: dict[tuple[str, str, str], int] = {}
        self.plans: dict[tuple[str, str, str], Plan] = {}
        self.counts: dict[tuple[str, str], DayCounts] = {}
        self.states: dict[str, DayState] = {}
        self.reservations = 0  # reserve calls, for tests of the block size
        # A reserve waits here when set (tests interleave concurrent takers).
        self.gate: asyncio.Event | None = None

    async def reserve(self, *, source: str, provider: str, date: str, want: int,
                      plan: Plan) -> int:
        self.reservations += 1
        if self.gate is not None:
            await self.gate.wait()
        key = (source, provider, date)
        self.plans[key] = plan
        granted = max(0, min(want, plan.cap - self.taken.get(key, 0)))
        self.taken[key] = self.taken.get(key, 0) + granted
        return granted

    async def release(self, *, source: str, provider: str, date: str, count: int) -> None:
        key = (source, provider, date)
        self.taken[key] = max(0, self.taken.get(key, 0) - count)

    async def used(self, *, source: str, date: str) -> dict[str, int]:
        return {p: n for (s, p, d), n in self.taken.items() if s == source and d == date}

    async def add_outcomes(self, *, source: str, date: str, counts: DayCounts) -> None:
        self.counts[(source, date)] = self.counts.get((source, date), DayCounts()) + counts

    async def outcomes(self, *, source: str, date: str) -> DayCounts:
        return self.counts.get((source, date), DayCounts())

    async def state(self, *, source: str) -> DayState | None:
        return self.states.get(source)

    async def today(self, *, date: str) -> tuple[list[CapUse], dict[str, DayState]]:
        uses = [CapUse(source=s, provider=p, date=d, taken=n, cap=self.plans[(s, p, d)].cap,
                       day=self.plans[(s, p, d)].day, template=self.plans[(s, p, d)].template)
                for (s, p, d), n in sorted(self.taken.items()) if d == date]
        return uses, dict(self.states)

    async def put_state(self, *, source: str, state: DayState,
                        expected: DayState | None) -> bool:
        if self.states.get(source) != expected:
            return False
        self.states[source] = state
        return True
