"""A warming source's current day: day 1 on its start date, one more for each date
after, except that a date whose previous day's bounce or deferral rate went out of
bounds (or that saw fewer attempts than `min_attempts`) holds: it repeats the day.

`step` decides one date (pure); `DayKeeper` applies it for every date since the stored
state, shares the result through the store (one sender wins each date, by a
conditional put) and records each advance or hold as an adaptive change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Literal

from quiver.adaptive.change import AdaptiveChange, ChangeRecorder
from quiver.policy.warmup import SourceWarmup, WarmupPolicy
from quiver.storage.base import StorageError
from quiver.storage.warmup import DayCounts, DayState, WarmupStore

log = logging.getLogger("quiver.warmup")

# A state put that loses to another sender is re-read and tried again this often.
MAX_TRIES = 3


def utc_date(at: float) -> dt.date:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).date()


def verdict(plan: SourceWarmup, counts: DayCounts) -> str:
    """Why `counts` (a day's attempts) hold the next day; "" when they let it advance."""
    b = plan.bounds
    if counts.attempts < b.min_attempts:
        return f"{counts.attempts} attempts, under the {b.min_attempts} needed to judge the day"
    if counts.bounce_rate() > b.max_bounce_rate:
        return (f"bounce rate {counts.bounce_rate():.1%} ({counts.bounced} of "
                f"{counts.attempts}) over {b.max_bounce_rate:.1%}")
    if counts.deferral_rate() > b.max_deferral_rate:
        return (f"deferral rate {counts.deferral_rate():.1%} ({counts.deferred} of "
                f"{counts.attempts}) over {b.max_deferral_rate:.1%}")
    return ""


def step(plan: SourceWarmup, state: DayState, previous: DayCounts) -> DayState:
    """The state on the date after `state.as_of`, given that date's attempts."""
    date = (dt.date.fromisoformat(state.as_of) + dt.timedelta(days=1)).isoformat()
    if state.day > plan.days:
        return DayState(day=state.day, as_of=date)  # warm: nothing left to hold
    why = verdict(plan, previous)
    return DayState(day=state.day if why else state.day + 1, as_of=date, why=why)


def first_state(plan: SourceWarmup) -> DayState:
    return DayState(day=1, as_of=plan.start.isoformat())


class DayKeeper:
    """The day of each warming source, settled once per date per sender."""

    def __init__(self, *, policy: WarmupPolicy, store: WarmupStore,
                 recorder: ChangeRecorder | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._store = store
        self._recorder = recorder
        self._clock = clock
        self._settled: dict[str, DayState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def day(self, source: str, date: dt.date) -> int:
        """The source's warm-up day on `date` (1 before its start date)."""
        state = self._settled.get(source)
        # A later as_of: another sender's clock is ahead; its decision stands.
        if state is not None and state.as_of >= date.isoformat():
            return state.day
        lock = self._locks.setdefault(source, asyncio.Lock())
        async with lock:
            return (await self._settle(source, date)).day

    async def _settle(self, source: str, date: dt.date) -> DayState:
        plan = self._policy.sources[source]
        today = date.isoformat()
        state = self._settled.get(source)
        if state is not None and state.as_of >= today:
            return state
        if date <= plan.start:
            # Not started (or starting today): day 1, nothing to decide or store yet.
            state = DayState(day=1, as_of=today)
            self._settled[source] = state
            return state
        for _ in range(MAX_TRIES):
            stored = await self._store.state(source=source)
            state = stored or first_state(plan)
            changes: list[AdaptiveChange] = []
            while state.as_of < today:
                if state.day > plan.days:  # warm: no date left to decide
                    state = DayState(day=state.day, as_of=today)
                    break
                previous = await self._store.outcomes(source=source, date=state.as_of)
                after = step(plan, state, previous)
                if state.day <= plan.days:
                    changes.append(self._change(plan, state, after, previous))
                state = after
            if stored == state or await self._store.put_state(source=source, state=state,
                                                                expected=stored):
                if self._recorder is not None:
                    await self._recorder.record(changes)
                self._settled[source] = state
                return state
        raise StorageError(f"warm-up day of {source}: the stored state kept changing")

    def _change(self, plan: SourceWarmup, before: DayState, after: DayState,
                counts: DayCounts) -> AdaptiveChange:
        action: Literal["warmup_advance", "warmup_hold"] = (
            "warmup_hold" if after.why else "warmup_advance")
        if after.why:
            reason = f"day {before.day} held on {after.as_of}: {before.as_of} had {after.why}"
        else:
            reason = (f"day {after.day} from {after.as_of}: {before.as_of} had "
                      f"{counts.attempts} attempts, bounce rate {counts.bounce_rate():.1%}, "
                      f"deferral rate {counts.deferral_rate():.1%}")
        # Observed: the rate that held the day, else the larger of the two.
        observed = (counts.bounce_rate() if "bounce rate" in after.why
                    else counts.deferral_rate() if "deferral" in after.why
                    else max(counts.bounce_rate(), counts.deferral_rate()))
        return AdaptiveChange(action=action, selector={"source": plan.source},
                              rule=plan.template, reason=reason, at=self._clock(),
                              observed=observed, old=before.day, new=after.day)
