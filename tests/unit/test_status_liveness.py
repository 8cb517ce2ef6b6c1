"""The event loop's liveness verdict on an injected clock: not yet ticked, ticked
within the bound, stalled past it; whatever the clock's origin."""

from __future__ import annotations

import pytest

from quiver.status.liveness import LoopBeat


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("origin", [0.0, 3.5, 1e9])
def test_healthy_within_the_bound_and_stalled_past_it(origin: float) -> None:
    clock = Clock(origin)
    beat = LoopBeat(clock=clock, interval=1.0, stall=30.0)
    first = beat.verdict()
    assert (first.healthy, first.age) == (False, None)
    assert first.reason == "the event loop has not ticked yet"
    beat.tick()
    clock.now += 30.0  # at the bound: still healthy
    verdict = beat.verdict()
    assert verdict.healthy and verdict.age == 30.0
    clock.now += 0.5
    stalled = beat.verdict()
    assert not stalled.healthy
    assert stalled.reason == "the event loop last ticked 30.5 s ago (bound 30 s)"
    beat.tick()
    assert beat.verdict().healthy and beat.verdict().age == 0.0


def test_a_clock_that_steps_back_reads_as_a_fresh_tick() -> None:
    clock = Clock(100.0)
    beat = LoopBeat(clock=clock)
    beat.tick()
    clock.now = 90.0
    assert beat.age() == 0.0 and beat.verdict().healthy


def test_the_bound_must_exceed_the_tick_interval() -> None:
    with pytest.raises(ValueError, match=r"stall bound \(1 s\) must exceed the tick interval"):
        LoopBeat(interval=1.0, stall=1.0)


async def test_the_tick_task_ticks_on_the_loop_until_stopped() -> None:
    import asyncio

    clock = Clock(5.0)
    beat = LoopBeat(clock=clock, interval=0.01, stall=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(beat.run(stop))
    deadline = asyncio.get_running_loop().time() + 30
    while beat.last != 5.0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    clock.now = 9.0
    while beat.last != 9.0:  # a later tick reads the clock again
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 30)
