"""The warm-up cap and the source picker: a warming source takes its weight's share
until its cap for the provider is used up, then the rest of the pool carries the mail;
concurrent takers never exceed the cap; what is not attempted goes back; with every
source capped the delivery is refused with a reason (deferred by the caller)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import pytest

from quiver.controls.active import ActiveControls
from quiver.controls.model import Control, Selector
from quiver.delivery import Attempt
from quiver.policy import Policy, parse_policy
from quiver.routing.mx import MxHost, Route
from quiver.routing.sources import NoSourceAvailable, SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.smtp.reply import local_reply
from quiver.storage.base import StorageError
from quiver.storage.warmup import DayCounts, MemoryWarmup, Plan
from quiver.warmup.days import DayKeeper
from quiver.warmup.gate import WarmupGate

TODAY = dt.date(2026, 12, 5)
NOW = dt.datetime(2026, 12, 5, 9, tzinfo=dt.UTC).timestamp()


def policy(*, both_warming: bool = False) -> Policy:
    second = ('[warmup.warm]\ntemplate = "standard"\nstart = "2026-12-05"\n'
              'caps = { gmail = [30] }\n') if both_warming else ""
    return parse_policy(f"""
default_pool = "p"
[providers]
gmail = ["*.google.com"]
[sources.new]
ip = "192.0.2.1"
ehlo = "new.example.com"
[sources.warm]
ip = "192.0.2.2"
ehlo = "warm.example.com"
[pools.p]
sources = {{ new = 1, warm = 1 }}
[warmup.new]
template = "standard"
start = "{TODAY}"
caps = {{ gmail = [20, 40] }}
{second}""")


def picker_for(p: Policy, store: MemoryWarmup) -> SourcePicker:
    days = DayKeeper(policy=p.warmup, store=store, clock=lambda: NOW)
    return SourcePicker(p, warmup=WarmupGate(policy=p.warmup, store=store, days=days,
                                             clock=lambda: NOW))


async def test_a_warming_source_carries_exactly_its_cap_and_the_pool_the_rest() -> None:
    store = MemoryWarmup()
    picker = picker_for(policy(), store)
    picks = Counter([(await picker.pick("p", provider="gmail")).name for _ in range(500)])
    assert picks == {"new": 20, "warm": 480}
    assert store.taken == {("new", "gmail", str(TODAY)): 20}
    # One reservation of 1/20 of the cap at a time (1 here), and none once it is spent.
    assert store.reservations == 21
    # Another provider has the template's default cap (50 on day 1).
    other = Counter([(await picker.pick("p", provider="example")).name for _ in range(200)])
    assert other == {"new": 50, "warm": 150}
    assert store.taken[("new", "example", str(TODAY))] == 50


async def test_every_source_capped_refuses_with_the_reason() -> None:
    store = MemoryWarmup()
    picker = picker_for(policy(both_warming=True), store)
    names = [(await picker.pick("p", provider="gmail")).name for _ in range(50)]
    assert Counter(names) == {"new": 20, "warm": 30}
    with pytest.raises(NoSourceAvailable) as err:
        await picker.pick("p", provider="gmail")
    assert str(err.value) == (
        "every source of pool 'p' that can take this mail is capped by its warm-up today: "
        "new has used its warm-up cap of 20 for gmail today (day 1, template standard); "
        "warm has used its warm-up cap of 30 for gmail today (day 1, template standard)")


async def test_a_delivery_too_large_for_what_is_left_goes_elsewhere() -> None:
    store = MemoryWarmup()
    picker = picker_for(policy(), store)
    store.taken[("new", "gmail", str(TODAY))] = 17  # other senders took 17 of 20
    assert [(await picker.pick("p", provider="gmail", recipients=5)).name
            for _ in range(2)] == ["warm", "warm"]
    assert (await picker.pick("p", provider="gmail", recipients=3)).name == "new"


async def test_unattempted_recipients_go_back_and_outcomes_are_counted() -> None:
    store = MemoryWarmup()
    picker = picker_for(policy(), store)
    gate = picker.warmup
    assert gate is not None
    assert await gate.take("new", "gmail", 20) is None
    assert await gate.take("new", "gmail", 1) is not None
    ok, soft, hard = (local_reply(250, "2.0.0", "ok"), local_reply(421, "4.7.28", "slow"),
                      local_reply(550, "5.1.1", "no"))
    attempts = [Attempt("a@x", ok), Attempt("b@x", soft), Attempt("c@x", hard),
                Attempt("d@x", soft, counts=False)]
    picker.settle("new", "gmail", attempts)
    assert await gate.take("new", "gmail", 1) is None  # d's share came back
    picker.give_back("new", "gmail", 2)  # a reroute
    assert await gate.take("new", "gmail", 2) is None
    await gate.flush()
    assert store.counts == {("new", str(TODAY)): DayCounts(attempts=3, bounced=1, deferred=1)}
    picker.settle("warm", "gmail", attempts)  # not warming: nothing counted
    await gate.flush()
    assert list(store.counts) == [("new", str(TODAY))]


async def test_concurrent_takers_never_exceed_the_cap() -> None:
    store = MemoryWarmup()
    store.gate = asyncio.Event()
    p = policy()
    gates = [picker_for(p, store).warmup for _ in range(4)]
    tasks = [asyncio.create_task(g.take("new", "gmail", 1)) for g in gates if g
             for _ in range(10)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*tasks)
    assert sum(1 for r in results if r is None) == 20
    assert store.taken[("new", "gmail", str(TODAY))] == 20


async def test_a_sender_that_stops_gives_back_what_it_reserved() -> None:
    store = MemoryWarmup()
    p = parse_policy(f"""
default_pool = "p"
[sources.new]
ip = "192.0.2.1"
ehlo = "new.example.com"
[pools.p]
sources = ["new"]
[warmup.new]
template = "standard"
start = "{TODAY}"
caps = {{ default = [400] }}
""")
    picker = picker_for(p, store)
    await picker.pick("p", provider=None)
    assert store.taken == {("new", "-", str(TODAY)): 20}  # a block of 1/20 of 400
    assert picker.warmup is not None
    await picker.warmup.close()
    assert store.taken == {("new", "-", str(TODAY)): 1}


class BrokenStore(MemoryWarmup):
    async def reserve(self, *, source: str, provider: str, date: str, want: int,
                      plan: Plan) -> int:
        raise StorageError("controls table unavailable")


async def test_a_store_that_fails_skips_the_warming_source() -> None:
    picker = picker_for(policy(), BrokenStore())
    assert {(await picker.pick("p", provider="gmail")).name for _ in range(6)} == {"warm"}


class GmailResolver:
    async def route(self, domain: str) -> Route:
        return Route(domain=domain, hosts=(MxHost("mx.gmail.test", 10, ("198.51.100.7",)),),
                     site="mx.gmail.test", provider="gmail")


async def test_the_scheduler_defers_unattempted_when_every_source_is_capped() -> None:
    store = MemoryWarmup()
    p = policy(both_warming=True)
    store.taken[("new", "gmail", str(TODAY))] = 20
    store.taken[("warm", "gmail", str(TODAY))] = 30
    s = Scheduler(policy=p, resolver=GmailResolver(),  # type: ignore[arg-type]
                  picker=picker_for(p, store))
    (attempt,) = await asyncio.wait_for(s.deliver(
        pool="p", domain="gmail.test", sender="a@news.test", recipients=["x@gmail.test"],
        message=b"Subject: x\r\n\r\nx\r\n"), 10)
    # Not an attempt: it goes back on the retry schedule, saying why.
    assert not attempt.counts and attempt.hold is None
    assert (attempt.reply.code, attempt.reply.enhanced) == (451, "4.4.1")
    assert "capped by its warm-up today" in attempt.reply.text
    assert s.queues == {}  # no ready queue, no connection


async def test_a_paused_delivery_gives_its_recipients_back_to_the_cap() -> None:
    store = MemoryWarmup()
    p = policy()
    controls = ActiveControls(clock=lambda: NOW)
    controls.replace([Control(id="g1", kind="pause", selector=Selector(provider="gmail"),
                              reason="", who="ops", created_at=NOW - 1)])
    pick = picker_for(p, store)
    s = Scheduler(policy=p, resolver=GmailResolver(),  # type: ignore[arg-type]
                  picker=pick, controls=controls, wall_clock=lambda: NOW)
    for _ in range(4):  # two picks of each source
        (attempt,) = await s.deliver(pool="p", domain="gmail.test", sender="a@news.test",
                                     recipients=["x@gmail.test"], message=b"x")
        assert attempt.hold is not None
    # The warming source's two picks came back: one reservation of 1 then none more.
    assert store.taken[("new", "gmail", str(TODAY))] == 1
