"""Policy reload against real servers: a lowered max_connections closes connections at a
scripted MX and holds from then on; a new SSM parameter version (moto's server, over HTTP)
reaches the running scheduler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_smtp_wire import Scripted, deliver_each, scripted_policy, scripted_policy_text, until

from quiver.devstack.moto_server import client, start_moto
from quiver.policy.reload import PolicySource, PolicyWatcher
from quiver.policy.source import read_policy_text
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler

pytestmark = pytest.mark.integration


def throttle(connections: int) -> str:
    return f'[[throttles]]\nsource = "*"\nmax_connections = {connections}'


class Counting:
    """A line-by-line SMTP responder that counts its open connections and their peak.

    Each answer to a message waits until `want` connections have been open at once, so
    a test sees the concurrency it asserts whatever the machine's speed (a client that
    never opens them fails the test at the hold's deadline, then is served at once).
    """

    HOLD_DEADLINE = 10.0

    def __init__(self, want: int = 1) -> None:
        self.open = 0
        self.peak = 0
        self.delivered = 0
        self.want = want

    def expect(self, want: int) -> None:
        """A new phase: the peak restarts from the connections open now."""
        self.peak = self.open
        self.want = want

    async def _hold(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.HOLD_DEADLINE
        while self.peak < self.want:
            if asyncio.get_running_loop().time() > deadline:
                self.want = 0  # not reached: stop holding, the test's assertion says why
                return
            await asyncio.sleep(0.005)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            writer.write(b"220 mx.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-mx.test\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await reader.readuntil(b"\r\n.\r\n")
                    await self._hold()
                    self.delivered += 1
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            self.open -= 1


async def deliver(scheduler: Scheduler, count: int, prefix: str) -> list[int]:
    results = await deliver_each(scheduler, [f"{prefix}{n}@d.test" for n in range(count)],
                                 timeout=30)
    return [a.reply.code for attempts in results for a in attempts]


async def test_a_lowered_max_connections_closes_the_extra_connections_and_holds() -> None:
    mx = Counting(want=3)
    async with Scripted(mx) as server:
        policy = scripted_policy(server, throttle(3))
        scheduler = Scheduler(policy=policy, picker=SourcePicker(policy),
                              resolver=MxResolver(routes=dict(policy.delivery.routes)))
        try:
            assert await deliver(scheduler, 24, "before") == [250] * 24
            assert mx.peak == 3 and mx.open == 3  # idle, kept for reuse
            scheduler.apply_policy(scripted_policy(server, throttle(1)))
            await until(lambda: mx.open <= 1)  # the idle extra connections QUIT
            mx.expect(1)
            assert await deliver(scheduler, 12, "after") == [250] * 12
            assert mx.peak == 1
            # Raised again: the queue may open more connections at once.
            scheduler.apply_policy(scripted_policy(server, throttle(4)))
            mx.expect(2)
            assert await deliver(scheduler, 24, "again") == [250] * 24
            assert 1 < mx.peak <= 4
        finally:
            await scheduler.close()
    assert mx.delivered == 60


async def test_a_new_ssm_parameter_version_reaches_the_running_scheduler(
        tmp_path: Path) -> None:
    moto = start_moto(log_dir=tmp_path)
    try:
        ssm = client(moto.endpoint, "ssm")
        async with Scripted(Counting()) as server:
            name = "/quiver/policy"
            template = scripted_policy_text(server.port, throttle(3))
            ssm.put_parameter(Name=name, Value=template, Type="String")
            first = scripted_policy(server, throttle(3))
            scheduler = Scheduler(policy=first, picker=SourcePicker(first),
                                  resolver=MxResolver(routes=dict(first.delivery.routes)))
            watcher = PolicyWatcher(
                PolicySource(origin=f"ssm:{name}", text=template, interval=0.05,
                             read=lambda: read_policy_text(f"ssm:{name}", ssm=lambda: ssm)),
                current=first, apply=scheduler.apply_policy)
            try:
                assert await deliver(scheduler, 3, "a") == [250] * 3
                (queue,) = scheduler.queues.values()
                assert queue.budget.limit == 3
                assert await watcher.check() is None  # the same version: nothing to do
                lowered = scripted_policy_text(server.port, throttle(1))
                ssm.put_parameter(Name=name, Value=lowered, Type="String", Overwrite=True)
                change = await watcher.check()
                assert change is not None and change.applied == ("throttles",)
                assert queue.budget.limit == 1
                # A broken version is refused; the running limits stay.
                ssm.put_parameter(Name=name, Value="default_pool = 7", Type="String",
                                  Overwrite=True)
                refused = await watcher.check()
                assert refused is not None and refused.errors and queue.budget.limit == 1
            finally:
                await scheduler.close()
    finally:
        moto.stop()

