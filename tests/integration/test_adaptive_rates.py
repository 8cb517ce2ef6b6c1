"""AIMD on the scheduler's path, with the rates in DynamoDB on moto's server over HTTP:
a burst of 421 4.7.28 from a real (scripted) MX cuts the (source, provider) rate the
ready queue is paced at, a second sender's controls poll reads the cut and paces its
own queue by it, and a quiet window with traffic raises the rate by one step.

The engine's wall clock is injected (windows and quiet periods pass at once); the
scheduler paces on its own monotonic clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_controls_moto import fresh_table
from test_smtp_wire import MESSAGE, Scripted

from quiver.adaptive.change import ChangeRecorder
from quiver.adaptive.engine import AdaptiveEngine
from quiver.adaptive.state import RateState
from quiver.controls.active import ActiveControls
from quiver.controls.poller import ControlPoller
from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.routing.mx import MxResolver
from quiver.routing.providers import ProviderMatcher
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.storage.base import RateStore
from quiver.storage.dynamo import DynamoControls
from quiver.storage.dynamo_rates import DynamoRates
from quiver.storage.memory import MemoryControls, MemoryEventSink

pytestmark = pytest.mark.integration


class Mx:
    """Accepts, or answers every RCPT with Gmail's rate-limit reply while `throttling`."""

    def __init__(self) -> None:
        self.throttling = False
        self.delivered = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-mx.test\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT" and self.throttling:
                writer.write(b"421 4.7.28 [127.0.0.2] Our system has detected an unusual rate "
                             b"of unsolicited mail originating from your IP address. "
                             b"temporarily rate limited.\r\n")
                await writer.drain()
                return
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                self.delivered += 1
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


def policy_text(port: int) -> str:
    return f"""
local_only = true
default_pool = "p"
[delivery]
port = {port}
allow_networks = ["127.0.0.0/8"]
routes = {{ "d.test" = "127.0.0.1" }}
[retry]
site_backoff = "1s"
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.quiver.test"
[pools.p]
sources = ["a"]
[providers]
bigmail = ["127.0.0.1"]
[[throttles]]
source = "*"
provider = "bigmail"
max_connections = 4
max_rate = "40/s"
[adaptive]
starter = false
step = "4/s"
quiet = "30s"
[[adaptive.rules]]
name = "bigmail-rate-limited"
provider = "bigmail"
code = 421
enhanced = "4.7.28"
window = "60s"
action = "reduce"
factor = 0.5
"""


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("adaptive"))
    try:
        yield server
    finally:
        server.stop()


class Sender:
    """A scheduler and its engine, as wiring builds them, on the shared table."""

    def __init__(self, text: str, *, table: str, ddb: object, clock: Clock) -> None:
        policy = parse_policy(text)
        self.handle = PolicyHandle(policy)
        self.events = MemoryEventSink()
        self.controls = ActiveControls(clock=clock)
        self.scheduler = Scheduler(
            policy=self.handle, picker=SourcePicker(policy), controls=self.controls,
            resolver=MxResolver(routes=dict(policy.delivery.routes),
                                providers=ProviderMatcher(policy.providers)))
        rates = DynamoRates(ddb, table)
        self.engine = AdaptiveEngine(
            policy=self.handle, recorder=ChangeRecorder(self.events),
            static_max=self.scheduler.static_rate, apply_rate=self.scheduler.adapt,
            controls=self.controls, control_store=DynamoControls(ddb, table),
            rate_store=rates, clock=clock)
        self.scheduler.observe = self.engine.observe
        self.poller = ControlPoller(DynamoControls(ddb, table), self.controls, rates=rates,
                                    on_rates=self.engine.shared, interval=lambda: 2.0)

    async def deliver(self, count: int) -> list[int]:
        results = await asyncio.wait_for(asyncio.gather(*(
            self.scheduler.deliver(pool="p", domain="d.test", sender="a@news.test",
                                   recipients=[f"u{uuid.uuid4().hex[:6]}@d.test"],
                                   message=MESSAGE) for _ in range(count))), 60)
        return [a.reply.code for attempts in results for a in attempts]

    async def backoff_over(self) -> None:
        """The site backoff the 421 started (site_backoff, on the scheduler's clock) has
        passed: a bounded wait on the condition."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while any(q.backing_off() for q in self.scheduler.queues.values()):
            assert loop.time() < deadline, "the site backoff did not end"
            await asyncio.sleep(0.05)

    def paced_at(self) -> float:
        (queue,) = self.scheduler.queues.values()
        limiter = queue._rate
        assert limiter is not None
        return limiter.per_second


async def test_a_rate_limit_burst_cuts_the_shared_rate_and_a_quiet_window_raises_it(
        moto: MotoServer, tmp_path: Path) -> None:
    ddb = client(moto.endpoint, "dynamodb")
    table = fresh_table(ddb)
    clock = Clock()
    mx = Mx()
    async with Scripted(mx) as server:
        one = Sender(policy_text(server.port), table=table, ddb=ddb, clock=clock)
        two = Sender(policy_text(server.port), table=table, ddb=ddb, clock=clock)
        try:
            assert set(await one.deliver(5)) == {250}
            assert one.paced_at() == 40.0

            mx.throttling = True
            codes = await one.deliver(5)
            assert 421 in codes
            await one.engine.settle()
            assert one.paced_at() == 20.0  # cut by the factor, at once here
            stored = await DynamoRates(ddb, table).rate("a", "bigmail")
            assert stored is not None and (stored.rate, stored.version) == (20.0, 1)
            (cut,) = one.events.records
            assert (cut["action"], cut["rule"], cut["old"], cut["new"]) == (
                "reduce", "bigmail-rate-limited", 40.0, 20.0)

            # The other sender: its next controls poll paces its queue by the cut.
            mx.throttling = False
            assert set(await two.deliver(2)) == {250}
            assert two.paced_at() == 40.0
            assert await two.poller.read()
            assert two.paced_at() == 20.0

            # A quiet window with traffic: one step up, written for everyone.
            clock.now += 31
            await one.backoff_over()
            assert set(await one.deliver(3)) == {250}
            await one.engine.settle()
            assert one.paced_at() == 24.0
            stored = await DynamoRates(ddb, table).rate("a", "bigmail")
            assert stored is not None and (stored.rate, stored.version) == (24.0, 2)
            assert await two.poller.read()
            assert two.paced_at() == 24.0
            assert [e["action"] for e in one.events.records] == ["reduce", "raise"]
        finally:
            await one.scheduler.close()
            await two.scheduler.close()


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> RateStore:
    if request.param == "memory":
        return MemoryControls()
    server = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    return DynamoRates(ddb, fresh_table(ddb))


async def test_rate_records_are_written_only_over_the_version_read(store: RateStore) -> None:
    """One contract, both stores: the first write needs no record, each later one the
    version it was decided from; a stale writer is refused and nothing changes."""
    first = RateState(source="s1", provider="google", rate=20.0, static_max=40.0,
                      action="reduce", rule="r", reason="421 4.7.28 on 3 of 10",
                      since=1_790_000_000.25, reduced_at=1_790_000_000.25)
    assert await store.rates() == []
    assert await store.rate("s1", "google") is None
    assert await store.put_rate(first, expected=None)
    assert not await store.put_rate(first, expected=None)  # someone wrote it first
    second = replace(first, rate=10.0, version=2)
    assert not await store.put_rate(second, expected=7)
    assert await store.put_rate(second, expected=1)
    assert await store.rate("s1", "google") == second
    other = replace(first, provider="yahoo")
    assert await store.put_rate(other, expected=None)
    assert sorted((s.provider, s.rate, s.version) for s in await store.rates()) == [
        ("google", 10.0, 2), ("yahoo", 20.0, 1)]
