"""A warming source's day with an injected clock: it advances one a date while the
previous day's rates stay within bounds, holds (and says why) when they do not, and
every advance or hold is a `control` event of actor `adaptive` with its rule (the
template) and the old and new day. Senders racing on one date decide it once."""

from __future__ import annotations

import datetime as dt

from quiver.adaptive.change import ChangeRecorder
from quiver.events import validate_record
from quiver.policy import parse_policy
from quiver.policy.warmup import SourceWarmup, WarmupPolicy
from quiver.storage.memory import MemoryEventSink
from quiver.storage.warmup import DayCounts, DayState, MemoryWarmup
from quiver.warmup.days import DayKeeper, step, utc_date, verdict

START = dt.date(2026, 12, 1)


def plan(**bounds: float) -> WarmupPolicy:
    extra = "".join(f"{k} = {v}\n" for k, v in bounds.items())
    policy = parse_policy(f"""
default_pool = "p"
[sources.w]
ip = "192.0.2.1"
ehlo = "w.example.com"
[pools.p]
sources = ["w"]
[warmup.w]
template = "standard"
start = "{START}"
{extra}""")
    return policy.warmup


def noon(date: dt.date) -> float:
    return dt.datetime(date.year, date.month, date.day, 12, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, date: dt.date) -> None:
        self.now = noon(date)

    def __call__(self) -> float:
        return self.now

    def on(self, date: dt.date) -> dt.date:
        self.now = noon(date)
        return date


def day(n: int) -> dt.date:
    return START + dt.timedelta(days=n - 1)


def test_verdict_names_the_rate_out_of_bounds() -> None:
    w = plan(max_bounce_rate=0.05, max_deferral_rate=0.2, min_attempts=10).sources["w"]
    assert verdict(w, DayCounts(attempts=100, bounced=5, deferred=20)) == ""
    assert verdict(w, DayCounts(attempts=100, bounced=6)) == \
        "bounce rate 6.0% (6 of 100) over 5.0%"
    assert verdict(w, DayCounts(attempts=100, deferred=21)) == \
        "deferral rate 21.0% (21 of 100) over 20.0%"
    assert verdict(w, DayCounts(attempts=9)) == "9 attempts, under the 10 needed to judge the day"


def test_step_past_the_last_day_stays_warm() -> None:
    w: SourceWarmup = plan().sources["w"]
    warm = DayState(day=w.days + 1, as_of="2026-12-20")
    assert step(w, warm, DayCounts(attempts=10, bounced=10)) == \
        DayState(day=w.days + 1, as_of="2026-12-21")


async def test_days_advance_and_hold_with_the_reason_recorded() -> None:
    store = MemoryWarmup()
    sink = MemoryEventSink()
    clock = Clock(day(1))
    keeper = DayKeeper(policy=plan(max_bounce_rate=0.05), store=store,
                       recorder=ChangeRecorder(sink), clock=clock)
    assert await keeper.day("w", utc_date(clock())) == 1
    assert await keeper.day("w", START - dt.timedelta(days=3)) == 1  # before its start
    await store.add_outcomes(source="w", date=str(day(1)), counts=DayCounts(attempts=50))
    assert await keeper.day("w", clock.on(day(2))) == 2
    await store.add_outcomes(source="w", date=str(day(2)),
                             counts=DayCounts(attempts=100, bounced=9))
    assert await keeper.day("w", clock.on(day(3))) == 2  # held: 9 % bounced on day 2
    assert store.states["w"] == DayState(day=2, as_of=str(day(3)),
                                         why="bounce rate 9.0% (9 of 100) over 5.0%")
    # Two quiet dates later (nothing sent: nothing out of bounds) it is two days on.
    assert await keeper.day("w", clock.on(day(5))) == 4
    changes = [r for r in sink.records if r["event"] == "control"]
    for record in changes:
        validate_record(record)
    assert [(r["action"], r["old"], r["new"]) for r in changes] == [
        ("warmup_advance", 1, 2), ("warmup_hold", 2, 2),
        ("warmup_advance", 2, 3), ("warmup_advance", 3, 4)]
    hold = changes[1]
    assert hold["actor"] == "adaptive" and hold["rule"] == "standard"
    assert hold["selector"] == {"source": "w"} and hold["observed"] == 0.09
    assert hold["reason"] == ("day 2 held on 2026-12-03: 2026-12-02 had bounce rate 9.0% "
                              "(9 of 100) over 5.0%")


async def test_a_date_is_decided_once_across_senders() -> None:
    store = MemoryWarmup()
    sinks = [MemoryEventSink(), MemoryEventSink()]
    clock = Clock(day(4))
    keepers = [DayKeeper(policy=plan(), store=store, recorder=ChangeRecorder(s), clock=clock)
               for s in sinks]
    assert await keepers[0].day("w", day(4)) == 4
    assert await keepers[1].day("w", day(4)) == 4
    assert len(sinks[0].records) == 3 and sinks[1].records == []  # one sender recorded
    # The second sender finds day 5 decided by the first and takes its day as stored.
    before = store.states["w"]
    await keepers[0].day("w", day(5))
    assert store.states["w"] != before
    assert await keepers[1].day("w", day(5)) == 5
    assert len(sinks[1].records) == 0


async def test_min_attempts_holds_a_day_that_says_nothing() -> None:
    store = MemoryWarmup()
    keeper = DayKeeper(policy=plan(min_attempts=20), store=store, clock=Clock(day(3)))
    await store.add_outcomes(source="w", date=str(day(1)), counts=DayCounts(attempts=30))
    await store.add_outcomes(source="w", date=str(day(2)), counts=DayCounts(attempts=5))
    assert await keeper.day("w", day(3)) == 2
    assert store.states["w"].why == "5 attempts, under the 20 needed to judge the day"


async def test_a_source_warm_long_ago_is_settled_without_reading_every_date() -> None:
    store = MemoryWarmup()
    keeper = DayKeeper(policy=plan(), store=store, clock=Clock(day(400)))
    w = plan().sources["w"]
    assert await keeper.day("w", day(400)) == w.days + 1
    assert store.states["w"] == DayState(day=w.days + 1, as_of=str(day(400)))
