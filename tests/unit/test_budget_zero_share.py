"""Cluster-wide connection limits split in whole connections: the tasks' slots add up to
the limit, a limit below the task count leaves some tasks with none, and a task with
none opens no connection there (its mail goes to another source, or waits unattempted
for a task that holds one)."""

from __future__ import annotations

import asyncio

import pytest
from test_ready_queue_reload import POLICY, ROUTE, FakeMx, _Connector, answered, until

from quiver.policy import parse_policy
from quiver.routing.mx import MxHost, Route
from quiver.routing.sources import SourcePicker
from quiver.scheduler.budget import Budgets, task_slots
from quiver.scheduler.ready import Job, ReadyQueue, Reroute
from quiver.scheduler.scheduler import Scheduler
from quiver.scheduler.throttle import Destination, Limit, Limits
from quiver.storage.memory import MemoryFleet

KEY = ("a", "rule0", "site:mx.d.test")


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("limit", [0, 1, 2, 5, 10, 19, 20, 21, 50])
def test_the_slots_of_every_task_add_up_to_the_limit(limit: int, tasks: int) -> None:
    slots = [task_slots(limit, seat=(rank, tasks), key=KEY) for rank in range(tasks)]
    assert sum(slots) == limit
    # As even as whole connections allow.
    assert max(slots) - min(slots) <= 1


def test_a_limit_below_the_task_count_is_one_slot_on_that_many_tasks_and_none_elsewhere() -> None:
    slots = [task_slots(10, seat=(rank, 20), key=KEY) for rank in range(20)]
    assert sorted(slots) == [0] * 10 + [1] * 10


def test_which_tasks_hold_a_small_limit_differs_from_one_budget_to_the_next() -> None:
    holders = {
        tuple(rank for rank in range(20)
              if task_slots(1, seat=(rank, 20), key=(source, "rule3", "provider:yahoo")))
        for source in ("tx1", "tx2", "bulk1", "bulk2", "bulk3")
    }
    assert all(len(h) == 1 for h in holders)
    assert len(holders) > 1  # not every small limit on one task


async def test_every_member_of_a_fleet_sees_the_same_order() -> None:
    fleet = MemoryFleet(clock=lambda: 1_790_000_000.0)
    members = [fleet.member(f"task-{i}") for i in (3, 1, 4, 0, 2)]
    for m in members:
        await m.join(asyncio.Event())
    for m in members:  # the first to join learns of the later ones at its next beat
        await m._start_beat()
    positions = [m.position() for m in members]
    assert sorted(positions) == [(rank, 5) for rank in range(5)]
    assert sum(task_slots(3, seat=p, key=KEY) for p in positions) == 3


def fleet_queues(mx: FakeMx, *, limit: int, tasks: int) -> list[ReadyQueue]:
    """One ready queue per simulated sender task (each with its own budgets, as tasks
    have), all to the same MX."""
    limits = Limits(max_connections=Limit(limit, KEY), max_messages_per_connection=None,
                    max_rate=None)
    dest = Destination(source="a", site=ROUTE.site, domain="d.test", provider=None,
                       mx_hosts=("mx.d.test",))
    source = POLICY.current.sources["a"]
    return [
        ReadyQueue(source=source, route=ROUTE, limits=limits, budgets=Budgets(),
                   connector=_Connector(mx), policy=POLICY,  # type: ignore[arg-type]
                   seat=lambda rank=rank: (rank, tasks), destination=dest)
        for rank in range(tasks)
    ]


async def test_a_task_with_no_slot_opens_no_connection_and_hands_its_mail_back() -> None:
    mx = FakeMx()
    queues = fleet_queues(mx, limit=2, tasks=5)
    seated = [q for q in queues if q.seated()]
    assert len(seated) == 2
    loop = asyncio.get_running_loop()
    sent: list[Job] = []
    handed_back = 0
    for queue in queues:
        for i in range(20):
            job = Job(sender="s@x.test", recipients=[f"r{i}@d.test"], message=b"m",
                      future=loop.create_future())
            queue.submit(job)
            if queue in seated:
                sent.append(job)
            else:
                assert isinstance(job.future.exception(), Reroute)
                handed_back += 1
    assert handed_back == 60
    assert await answered(sent) == [250] * 40
    # The fleet held the limit: two connections, never one per task.
    assert mx.peak_open <= 2
    for queue in queues:
        assert queue.budget.peak <= (1 if queue in seated else 0)
        await queue.close()


async def test_a_task_that_loses_its_slot_closes_its_connection_and_hands_back_the_rest() -> None:
    mx = FakeMx()
    seat = [(0, 1)]
    limits = Limits(max_connections=Limit(1, KEY), max_messages_per_connection=None,
                    max_rate=None)
    dest = Destination(source="a", site=ROUTE.site, domain="d.test", provider=None,
                       mx_hosts=("mx.d.test",))
    queue = ReadyQueue(source=POLICY.current.sources["a"], route=ROUTE, limits=limits,
                       budgets=Budgets(), connector=_Connector(mx),  # type: ignore[arg-type]
                       policy=POLICY, seat=lambda: seat[0], destination=dest)
    loop = asyncio.get_running_loop()
    jobs = [Job(sender="s@x.test", recipients=[f"r{i}@d.test"], message=b"m",
                future=loop.create_future()) for i in range(300)]
    for job in jobs:
        queue.submit(job)
    await until(lambda: mx.delivered >= 5)
    # A second task joined and the slot is its own: this one holds none now.
    seat[0] = next((rank, 2) for rank in range(2)
                   if not task_slots(1, seat=(rank, 2), key=KEY))
    await until(lambda: all(j.future.done() for j in jobs) and mx.open == 0)
    rerouted = [j for j in jobs if not j.future.cancelled() and j.future.exception()]
    assert rerouted and all(isinstance(j.future.exception(), Reroute) for j in rerouted)
    assert queue.active == 0 and queue.budget.open == 0
    await queue.close()


class _Resolver:
    def __init__(self, route: Route) -> None:
        self._route = route

    async def route(self, domain: str) -> Route:
        return self._route


TWO_SOURCES = parse_policy("""
default_pool = "p"
[delivery]
ehlo = "mta.example.test"
[sources.a]
ip = "192.0.2.10"
ehlo = "a.example.test"
[sources.b]
ip = "192.0.2.11"
ehlo = "b.example.test"
[pools.p]
sources = ["a", "b"]
[[throttles]]
source = "*"
domain = "d.test"
max_connections = 1
""")


@pytest.mark.parametrize("rank", [0, 1, 2])
async def test_the_scheduler_sends_through_the_sources_this_task_holds_a_slot_of(
        rank: int) -> None:
    """Three tasks, two sources with max_connections = 1 each: each task sends only
    through a source whose slot it holds, and defers, unattempted, when it holds none."""
    mx = FakeMx()
    route = Route(domain="d.test", hosts=(MxHost("mx.d.test", 10, ("192.0.2.9",)),),
                  site="mx.d.test", provider=None)
    scheduler = Scheduler(policy=TWO_SOURCES, resolver=_Resolver(route),  # type: ignore[arg-type]
                          picker=SourcePicker(TWO_SOURCES),
                          connector=_Connector(mx),  # type: ignore[arg-type]
                          seat=lambda: (rank, 3))
    held = {s for s in ("a", "b")
            if task_slots(1, seat=(rank, 3), key=(s, "rule0", "domain:d.test"))}
    results = await asyncio.gather(*(
        scheduler.deliver(pool="p", domain="d.test", sender="s@x.test",
                          recipients=[f"r{i}@d.test"], message=b"m") for i in range(12)))
    attempts = [a for r in results for a in r]
    if held:
        assert {a.path.source for a in attempts} <= held
        assert all(a.reply.code == 250 for a in attempts)
        assert mx.peak_open <= len(held)
    else:
        assert mx.opened == 0
        assert all(a.reply.code == 451 and not a.counts for a in attempts)
        assert "held by other sender tasks" in attempts[0].reply.text
    await scheduler.close()
