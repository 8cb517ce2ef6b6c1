"""The fleet share on the in-memory fleet: a task knows its share once it has joined,
a heartbeat older than `stale` no longer counts, and a stopped task leaves."""

from __future__ import annotations

import asyncio

from quiver.storage.membership import FixedShare
from quiver.storage.memory import MemoryFleet

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def test_join_counts_the_live_tasks_and_a_stop_leaves_the_fleet() -> None:
    fleet = MemoryFleet(clock=Clock())
    a, b = fleet.member("task-a"), fleet.member("task-b")
    await a.join(asyncio.Event())
    assert a.share() == 1.0
    await b.join(asyncio.Event())
    assert b.share() == 0.5
    stop = asyncio.Event()
    stop.set()
    await b.run(stop)  # stopped before its first interval: it only leaves
    assert set(fleet.heartbeats) == {"task-a"}


async def test_a_heartbeat_older_than_stale_is_a_dead_task() -> None:
    clock = Clock()
    fleet = MemoryFleet(clock=clock)
    a, b = fleet.member("task-a", stale=30.0), fleet.member("task-b", stale=30.0)
    await a.join(asyncio.Event())
    clock.now += 30.0
    await b.join(asyncio.Event())
    assert b.share() == 1.0  # a's heartbeat is 30 s old: a counts as dead


async def test_a_fixed_share_needs_no_fleet() -> None:
    three = FixedShare(3)
    await three.join(asyncio.Event())
    assert three.share() == 1 / 3
    assert FixedShare(0).share() == 1.0
