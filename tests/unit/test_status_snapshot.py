"""A sender's status snapshot, on injected clocks: each ready queue's state and its
reason (paused, backing off until when and why, throttled by which limit, sending,
idle), depth and connections, recent outcomes and deferral rate, the last error per
site, proxy health, and the controls hook; and the outcome window that feeds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_ready_queue_reload import POLICY, SOURCE

from quiver.delivery import Attempt, Path
from quiver.routing.mx import MxHost, MxResolver, Route
from quiver.routing.sources import SourcePicker
from quiver.scheduler.budget import Budgets
from quiver.scheduler.health import ProxyHealth
from quiver.scheduler.outcomes import BUCKET, WINDOW, LastErrors, OutcomeWindow
from quiver.scheduler.ready import Job, ReadyQueue
from quiver.scheduler.scheduler import Scheduler
from quiver.scheduler.throttle import Destination, Limit, Limits
from quiver.smtp.reply import Reply
from quiver.status.snapshot import StatusBoard, rfc3339
from quiver.units import Rate

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedConnector:
    """Connections that open only when the test lets them (never, here): a queue's
    connections stay counted as open, so its state can be read at leisure."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def open(self, source: object, route: Route, tls_mode: str = "") -> tuple[object, Path]:
        await self.gate.wait()
        raise AssertionError("the gate never opens in these tests")

    def template(self, source: object, route: Route, tls_mode: str | None = None) -> Path:
        return Path(source=SOURCE.name, site=route.site)


def route(site: str) -> Route:
    return Route(domain=site, hosts=(MxHost(site, 10, ("192.0.2.9",)),), site=site,
                 provider="prov")


def make_queue(site: str, *, clock: Clock, budgets: Budgets, connector: GatedConnector,
               connections: int = 4, rate: float | None = None) -> ReadyQueue:
    limits = Limits(
        max_connections=Limit(connections, ("a", "conn", site)),
        max_messages_per_connection=None,
        max_rate=Limit(Rate(rate, 1.0), ("a", "rate", site)) if rate else None)
    return ReadyQueue(
        source=SOURCE, route=route(site), limits=limits, budgets=budgets,
        connector=connector,  # type: ignore[arg-type]
        policy=POLICY, destination=Destination(source="a", site=site, domain=site,
                                               provider="prov", mx_hosts=(site,)),
        clock=clock)


def submit(queue: ReadyQueue, count: int) -> None:
    loop = asyncio.get_running_loop()
    for i in range(count):
        queue.submit(Job(sender="s@x.test", recipients=[f"r{i}@d.test", f"q{i}@d.test"],
                         message=b"m", future=loop.create_future()))


@pytest.fixture
async def gated() -> AsyncIterator[GatedConnector]:
    connector = GatedConnector()
    yield connector
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("conn ")]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def test_every_queue_state_with_its_reason(gated: GatedConnector) -> None:
    mono = Clock(500.0)
    budgets = Budgets(clock=mono)
    scheduler = Scheduler(policy=POLICY, resolver=MxResolver(),
                          picker=SourcePicker(POLICY.current), clock=mono)
    queues = {
        site: make_queue(site, clock=mono, budgets=budgets, connector=gated,
                         connections=1 if site == "full.test" else 4,
                         rate=1.0 if site == "paced.test" else None)
        for site in ("idle.test", "full.test", "paced.test", "busy.test", "failing.test",
                     "paused.test")
    }
    for site, queue in queues.items():
        scheduler.queues[("a", site)] = queue
    # full.test: its one connection is taken (by another queue of the same rule).
    budgets.connections(("a", "conn", "full.test"), 1).try_acquire(1)
    submit(queues["full.test"], 3)
    # paced.test: both of the rested limiter's first tokens spent, the next one not due.
    limiter = budgets.rate(("a", "rate", "paced.test"), 1.0)
    assert limiter.try_acquire() and limiter.try_acquire()
    submit(queues["paced.test"], 2)
    submit(queues["busy.test"], 1)  # a connection opens for it
    submit(queues["paused.test"], 1)
    queues["failing.test"].closed_by_server(Reply(421, "4.7.0", "try again later"),
                                            Path(source="a", site="failing.test"))

    board = StatusBoard(
        task_id="task-1", policy=POLICY, scheduler=scheduler,
        wall=Clock(WALL), mono=mono, started=WALL - 60,
        paused=lambda d: "paused by ops: maintenance" if d.site == "paused.test" else None,
        controls=lambda: [{"kind": "pause", "selector": {"domain": "paused.test"}}],
        inflight=lambda: (7, 7000), share=lambda: 0.5, loop_age=lambda: 0.25)
    snap = board.snapshot()
    by_site = {q["site"]: q for q in snap["queues"]}

    assert by_site["idle.test"]["state"] == "idle"
    full = by_site["full.test"]
    assert (full["state"], full["held_by"], full["depth"], full["recipients"],
            full["connections"]) == ("throttled", "connections", 3, 6, 0)
    paced = by_site["paced.test"]
    # Its connections are open, waiting for the next token.
    assert (paced["state"], paced["held_by"], paced["connections"]) == ("throttled", "rate", 2)
    busy = by_site["busy.test"]
    assert (busy["state"], busy["connections"], busy["depth"]) == ("sending", 1, 1)
    failing = by_site["failing.test"]
    assert failing["state"] == "backing off"
    # Backing off for the policy's site_backoff (5 s) from the monotonic now, shown on
    # the wall clock.
    assert failing["until"] == rfc3339(WALL + 5)
    assert "try again later" in failing["why"]
    paused = by_site["paused.test"]
    assert (paused["state"], paused["why"]) == ("paused", "paused by ops: maintenance")

    # Deepest first.
    assert [q["site"] for q in snap["queues"]][:2] == ["full.test", "paced.test"]
    assert snap["task"] == "task-1"
    assert snap["at"] == "2026-01-01T00:00:00.000Z"
    assert snap["started_at"] == "2025-12-31T23:59:00.000Z"
    assert snap["policy"] == {"version": 1, "digest": None}
    # Connections opened for paced.test (2), busy.test and paused.test (1 each).
    assert snap["inflight"] == {"messages": 7, "bytes": 7000, "jobs": 7, "connections": 4}
    assert snap["share"] == 0.5
    assert snap["loop_age"] == 0.25
    assert snap["controls"] == [{"kind": "pause", "selector": {"domain": "paused.test"}}]

    # Once the backoff has passed on the monotonic clock, the queue is idle again.
    mono.now += 6
    later = {q["site"]: q for q in board.snapshot()["queues"]}
    assert later["failing.test"]["state"] == "idle"


async def test_outcomes_and_last_errors_reach_the_snapshot() -> None:
    mono = Clock(100.0)
    scheduler = Scheduler(policy=POLICY, resolver=MxResolver(),
                          picker=SourcePicker(POLICY.current), clock=mono)
    queue = make_queue("mx.test", clock=mono, budgets=scheduler.budgets,
                       connector=GatedConnector())
    scheduler.queues[("a", "mx.test")] = queue
    here = Path(source="a", site="mx.test")
    attempts = [Attempt("a@x", Reply(250, "2.0.0", "ok"), here),
                Attempt("b@x", Reply(250, "2.0.0", "ok"), here),
                Attempt("c@x", Reply(451, "4.7.1", "greylisted, try later"), here),
                Attempt("d@x", Reply(550, "5.1.1", "no such user"), here)]
    queue.outcomes.add(attempts)
    scheduler.last_errors.add("mx.test", attempts)
    mono.now += 3
    snap = StatusBoard(task_id="t", policy=POLICY, scheduler=scheduler, wall=Clock(WALL),
                       mono=mono).snapshot()
    row = snap["queues"][0]
    assert (row["delivered"], row["deferred"], row["bounced"]) == (2, 1, 1)
    assert row["deferral_rate"] == 0.25
    # The last failure of the batch, with when it happened (3 s before now).
    assert snap["last_errors"] == [{
        "site": "mx.test", "at": rfc3339(WALL - 3), "source": "a", "code": 550,
        "enhanced": "5.1.1", "text": "no such user"}]


def test_proxy_health_per_node() -> None:
    from quiver.policy import parse_policy

    policy = parse_policy("""
default_pool = "p"
[delivery]
ehlo = "mta.example.test"
[proxy.nodes.n1]
address = "10.0.0.1"
az = "az1"
[proxy.nodes.n2]
address = "10.0.0.2"
az = "az2"
[sources.a]
ip = "192.0.2.10"
ehlo = "a.example.test"
node = "n1"
local_ip = "10.0.0.11"
[pools.p]
sources = ["a"]
""")
    picker = SourcePicker(policy)
    health = ProxyHealth(policy=policy, picker=picker)
    health.mark("n1", False, "health probe failed")
    scheduler = Scheduler(policy=policy, resolver=MxResolver(), picker=picker)
    snap = StatusBoard(task_id="t", policy=scheduler.policy, scheduler=scheduler,
                       health=health).snapshot()
    assert snap["proxies"] == [
        {"node": "n1", "healthy": False, "why": "health probe failed"},
        {"node": "n2", "healthy": True, "why": None}]
    health.mark("n1", True)
    assert StatusBoard(task_id="t", policy=scheduler.policy, scheduler=scheduler,
                       health=health).snapshot()["proxies"][0] == {
        "node": "n1", "healthy": True, "why": None}


def test_the_outcome_window_forgets_what_is_older_than_the_window() -> None:
    clock = Clock(7.0)  # any origin: only differences matter
    window = OutcomeWindow(clock=clock)
    deferred = Attempt("a@x", Reply(421, "4.7.0", "later"))
    delivered = Attempt("b@x", Reply(250, None, "ok"))
    window.add([deferred, deferred, delivered])
    assert window.counts().deferral_rate == pytest.approx(2 / 3)
    clock.now += WINDOW - BUCKET  # still inside the window
    window.add([delivered])
    assert window.counts().total == 4
    clock.now += BUCKET + 1  # the first bucket has left it
    counts = window.counts()
    assert (counts.delivered, counts.deferred, counts.bounced) == (1, 0, 0)
    clock.now += WINDOW + 1
    assert window.counts().total == 0
    assert window.counts().deferral_rate == 0.0


def test_last_errors_keep_the_newest_sites_and_bound_the_text() -> None:
    clock = Clock(0.0)
    errors = LastErrors(clock=clock, max_sites=2)
    ok = Attempt("a@x", Reply(250, None, "ok"))
    errors.add("s1", [ok])
    assert errors.items() == []  # a success is no error
    for i, site in enumerate(("s1", "s2", "s3")):
        clock.now = float(i)
        errors.add(site, [Attempt("a@x", Reply(451, None, "x" * 1000))])
    assert [site for site, _ in errors.items()] == ["s2", "s3"]
    error = errors.get("s3")
    assert error is not None and error.at == 2.0 and len(error.text) == 300
