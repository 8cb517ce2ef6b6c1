"""A ready queue rebinding to new limits under load (policy reload, cluster share), with a
fake connector: every job is answered, connections stay within the limit, and a lowered
limit closes only the extra connections, without a reconnect storm. And a raised max_rate
applies at once, whatever the clock's origin."""

from __future__ import annotations

import asyncio

import pytest

from quiver.delivery import Path
from quiver.policy import Source, parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.routing.mx import MxHost, Route
from quiver.scheduler.budget import Budgets
from quiver.scheduler.ready import Job, ReadyQueue
from quiver.scheduler.throttle import Destination, Limit, Limits
from quiver.smtp.reply import Reply
from quiver.smtp.session import SessionError, TransactionResult

SOURCE = Source(name="a", ip="192.0.2.1", ehlo="a.test", az="az1")
ROUTE = Route(domain="d.test", hosts=(MxHost("mx.d.test", 10, ("192.0.2.9",)),),
              site="mx.d.test", provider=None)
DESTINATION = Destination(source="a", site=ROUTE.site, domain="d.test", provider=None,
                          mx_hosts=("mx.d.test",))
# Retry backoff 5 s and pipelining on, read through a handle as the scheduler's are.
POLICY = PolicyHandle(parse_policy("""
default_pool = "p"
[delivery]
ehlo = "mta.example.test"
[sources.a]
ip = "192.0.2.10"
ehlo = "a.example.test"
[pools.p]
sources = ["a"]
[retry]
site_backoff = "5s"
"""))
DONE_WITHIN = 60.0  # a bound on a stuck queue, not a speed: these finish in about a second


def limits(connections: int, rule: int = 0) -> Limits:
    return Limits(max_connections=Limit(connections, ("a", f"rule{rule}", "site:mx.d.test")),
                  max_messages_per_connection=None, max_rate=None)


class FakeMx:
    """Counts connections open, opened, closed, and the most sending at once."""

    def __init__(self, *, pipelining: bool = False, closed_unused: int = 0) -> None:
        self.pipelining = pipelining
        # The first this many sessions are found closed at their first send (as when
        # the proxy they went through died before they carried a transaction).
        self.closed_unused = closed_unused
        self.opened = self.open = self.closed = self.delivered = 0
        self.busy = self.peak_busy = self.peak_open = 0

    async def open_session(self, source: Source, route: Route,
                           tls_mode: str = "opportunistic") -> tuple[_Session, Path]:
        await asyncio.sleep(0.001)
        self.opened += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        return _Session(self, closed=self.opened <= self.closed_unused), Path(source=source.name)

    def template(self, source: Source, route: Route, tls_mode: str | None = None) -> Path:
        return Path(source=source.name, tls_mode=tls_mode)


class _Session:
    """Holds the job handed over as `then` (`pipelined`) until `send_pipelined`, as
    SmtpSession does."""

    def __init__(self, mx: FakeMx, *, closed: bool = False) -> None:
        self.mx = mx
        self.pipelining = mx.pipelining
        self.is_open = not closed
        self.pipeline_next_failed = None
        self.pipelined: Job | None = None

    async def send(self, *, sender: str, recipients: list[str], message: bytes,
                   eight_bit: bool = False, then: Job | None = None,
                   then_eight_bit: bool = False) -> TransactionResult:
        assert self.pipelined is None, "a send that abandons the pipelined job"
        result = await self._transact(recipients)
        self.pipelined = then
        return result

    async def send_pipelined(self, *, message: bytes, eight_bit: bool = False,
                             then: Job | None = None,
                             then_eight_bit: bool = False) -> TransactionResult:
        held, self.pipelined = self.pipelined, None
        assert held is not None, "send_pipelined without a pipelined job"
        result = await self._transact(held.recipients)
        self.pipelined = then
        return result

    async def _transact(self, recipients: list[str]) -> TransactionResult:
        if not self.is_open:
            raise SessionError("closed", Reply(421, "4.4.2", "closed before the first MAIL"))
        self.mx.busy += 1
        self.mx.peak_busy = max(self.mx.peak_busy, self.mx.busy)
        try:
            await asyncio.sleep(0.005)
        finally:
            self.mx.busy -= 1
        self.mx.delivered += 1
        return TransactionResult({r: Reply(250, "2.0.0", "ok") for r in recipients})

    async def close(self) -> None:
        await asyncio.sleep(0.003)  # QUIT's round trip: the slot is released after it
        self.mx.open -= 1
        self.mx.closed += 1


class _Connector:
    def __init__(self, mx: FakeMx) -> None:
        self.open = mx.open_session
        self.template = mx.template


def make_queue(mx: FakeMx, budgets: Budgets, connections: int,
               seat: list[tuple[int, int]] | None = None) -> ReadyQueue:
    seats = seat if seat is not None else [(0, 1)]
    return ReadyQueue(source=SOURCE, route=ROUTE, limits=limits(connections), budgets=budgets,
                      connector=_Connector(mx), policy=POLICY,  # type: ignore[arg-type]
                      seat=lambda: seats[0], destination=DESTINATION)


def submit(queue: ReadyQueue, count: int) -> list[Job]:
    loop = asyncio.get_running_loop()
    jobs = [Job(sender="s@x.test", recipients=[f"r{i}@d.test"], message=b"m",
                future=loop.create_future()) for i in range(count)]
    for job in jobs:
        queue.submit(job)
    return jobs


async def answered(jobs: list[Job]) -> list[int]:
    results = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), DONE_WITHIN)
    return [a.reply.code for attempts in results for a in attempts]


async def until(predicate: object, limit: float = DONE_WITHIN) -> None:
    """Wait for a condition (polled, the loop running meanwhile); fail if it never holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_a_lowered_limit_with_a_backlog_keeps_delivering_within_it() -> None:
    mx, budgets = FakeMx(), Budgets()
    queue = make_queue(mx, budgets, 4)
    jobs = submit(queue, 200)
    await until(lambda: mx.delivered >= 20)
    queue.apply(limits(2), budgets)
    await until(lambda: mx.open <= 2)
    mx.peak_open, opened = mx.open, mx.opened
    assert await answered(jobs) == [250] * 200
    assert mx.peak_open <= 2
    assert mx.opened - opened <= 2  # no reconnect storm
    assert queue.budget.open == mx.open
    await queue.close()


async def test_a_task_joining_the_cluster_halves_the_connections_and_keeps_delivering() -> None:
    mx, budgets, seat = FakeMx(), Budgets(), [(0, 1)]
    queue = make_queue(mx, budgets, 4, seat)
    jobs = submit(queue, 200)
    await until(lambda: mx.delivered >= 20)
    seat[0] = (0, 2)  # membership: a second sender task is live; no reload at all
    await until(lambda: mx.open <= 2)
    mx.peak_open, opened = mx.open, mx.opened
    assert await answered(jobs) == [250] * 200
    assert mx.peak_open <= 2 and mx.opened - opened <= 2
    await queue.close()


async def test_a_lowered_limit_closes_only_the_extra_idle_connections() -> None:
    mx, budgets = FakeMx(), Budgets()
    queue = make_queue(mx, budgets, 4)
    assert await answered(submit(queue, 8)) == [250] * 8
    assert mx.open == 4
    queue.apply(limits(2), budgets)
    # The two extra connections closed and their workers are gone; the two left are
    # idle within the limit, so nothing else closes until their idle timeout.
    await until(lambda: mx.closed >= 2 and queue.active == 2)
    assert mx.open == 2 and mx.closed == 2
    assert queue.idle == 2 and queue.budget.open == 2 and not queue.jobs
    await queue.close()


async def test_pipelining_connections_above_a_lowered_limit_close_after_their_message() -> None:
    mx, budgets = FakeMx(pipelining=True), Budgets()
    queue = make_queue(mx, budgets, 4)
    jobs = submit(queue, 300)
    await until(lambda: mx.delivered >= 20)
    queue.apply(limits(1), budgets)
    await until(lambda: mx.open <= 1)
    mx.peak_busy = mx.busy
    assert await answered(jobs) == [250] * 300
    assert mx.peak_busy <= 1
    await queue.close()


async def test_a_budget_replaced_before_the_worker_runs_is_released_where_taken() -> None:
    mx, budgets = FakeMx(), Budgets()
    queue = make_queue(mx, budgets, 4)
    old = queue.budget
    jobs = submit(queue, 1)  # takes a slot of `old`; the worker task has not run yet
    queue.apply(limits(4, rule=1), budgets)  # the matching rule renumbered: a new budget
    new = queue.budget
    assert new is not old
    assert await answered(jobs) == [250]
    await queue.close()
    # Its worker, told to close, hands the slot back where it was counted.
    await until(lambda: queue.active == 0)
    assert (old.open, new.open) == (0, 0)


async def test_a_renumbered_rule_with_a_backlog_keeps_to_the_same_limit() -> None:
    mx, budgets = FakeMx(), Budgets()
    queue = make_queue(mx, budgets, 4)
    jobs = submit(queue, 300)
    await until(lambda: mx.delivered >= 20)
    opened = mx.opened
    mx.peak_open = mx.open
    queue.apply(limits(4, rule=1), budgets)  # a rule inserted above: same limit, new key
    assert await answered(jobs) == [250] * 300
    assert mx.peak_open <= 4 and mx.opened - opened == 0  # the connections moved over
    await queue.close()


class Clock:
    """A clock that moves only when told to, starting wherever a test puts it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Monotonic clocks start anywhere: near 0 on a freshly booted machine, ~1e6 after
# ~12 days up; an injected clock may even start below 0.
ORIGINS = [0.0, 1.0, 3599.0, 1e6, -5e3]


@pytest.mark.parametrize("origin", ORIGINS)
def test_a_raised_max_rate_applies_to_the_next_send(origin: float) -> None:
    clock = Clock(origin)
    budgets = Budgets(clock=clock)
    limiter = budgets.rate(("a", "rule0", "site:s"), 1 / 3600)  # "1/h"
    assert limiter.try_acquire() and limiter.try_acquire()  # the second books the next hour
    assert not limiter.try_acquire()
    clock.now += 1.0
    assert not limiter.try_acquire()  # an hour's pace: nothing a second later
    budgets.rate(("a", "rule0", "site:s"), 100.0)  # reloaded as "100/s"
    assert limiter.try_acquire()


@pytest.mark.parametrize("origin", ORIGINS)
def test_a_new_rate_limiter_paces_the_same_whatever_the_clocks_origin(origin: float) -> None:
    """What a fresh limiter allows, second by second, does not depend on where its clock
    started (it did: `_next = 0.0` was "due at boot", so on a machine up for less than one
    interval a fresh limiter gave one send, on one up longer two)."""
    clock = Clock(origin)
    limiter = Budgets(clock=clock).rate(("a", "rule0", "site:s"), 2.0)  # every 0.5 s
    granted = []
    for step in range(40):  # 4 s in 0.1 s steps, asking 3 times per step
        clock.now = origin + step / 10
        granted.append(sum(limiter.try_acquire() for _ in range(3)))
    # Rested: two at once (one interval of catch-up), then one every 0.5 s.
    assert granted == [2, *([0, 0, 0, 0, 1] * 8)[:39]]

