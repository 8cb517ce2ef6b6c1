"""One connection cap per MX site across sources, against a scripted MX on loopback that
counts its concurrent connections: two sources with max_connections = 20 each never hold
more than the site's max_mx_connections (20 by default) together; and a server that
refuses connections past its own limit with Exim's "421 Too many concurrent SMTP
connections" gets all its mail over the connections it accepted, with no deferral and
no backoff."""

from __future__ import annotations

import asyncio

import pytest
from test_smtp_wire import MESSAGE, Scripted

from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler

pytestmark = pytest.mark.integration

MESSAGES = 300
EXIM_REFUSAL = (b"421 mx.test Too many concurrent SMTP connections; "
                b"please try again later.\r\n")


class Mx:
    """Counts concurrent connections and their peak; with `limit`, refuses a connection
    that would exceed it in its greeting, as Exim's smtp_accept_max does."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.open = self.peak = self.refused = self.delivered = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        if self.limit is not None and self.open >= self.limit:
            self.refused += 1
            writer.write(EXIM_REFUSAL)
            await writer.drain()
            return
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
                    await asyncio.sleep(0.03)  # keeps the connection busy for a while
                    self.delivered += 1
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            self.open -= 1


def two_sources(port: int, throttles: str) -> Scheduler:
    policy = parse_policy(f"""
# Loopback MXes: only a local_only policy may allow 127.0.0.0/8.
local_only = true
default_pool = "p"
[delivery]
port = {port}
allow_networks = ["127.0.0.0/8"]
routes = {{ "d.test" = "127.0.0.1" }}
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.quiver.test"
[sources.b]
ip = "127.0.0.3"
local_ip = "127.0.0.3"
ehlo = "b.quiver.test"
[pools.p]
sources = ["a", "b"]
[[throttles]]
source = "*"
max_connections = 20
{throttles}
""")
    return Scheduler(policy=policy, picker=SourcePicker(policy),
                     resolver=MxResolver(routes=dict(policy.delivery.routes)))


async def deliver_all(s: Scheduler) -> list[tuple[int, bool]]:
    results = await asyncio.wait_for(asyncio.gather(*(
        s.deliver(pool="p", domain="d.test", sender="a@news.test",
                  recipients=[f"u{n}@d.test"], message=MESSAGE)
        for n in range(MESSAGES))), 120)
    return [(a.reply.code, a.counts) for attempts in results for a in attempts]


@pytest.mark.parametrize(("throttle", "cap"), [
    ("", 20),  # no rule names the site: the default cap
    ("max_mx_connections = 12", 12),
])
async def test_two_sources_never_hold_more_than_the_sites_cap_together(
        throttle: str, cap: int) -> None:
    mx = Mx()
    async with Scripted(mx) as server:
        s = two_sources(server.port, throttle)
        try:
            outcomes = await deliver_all(s)
            sources = {source for source, _ in s.queues}
        finally:
            await s.close()
    assert outcomes == [(250, True)] * MESSAGES
    assert sources == {"a", "b"}  # both sources carried mail
    assert mx.peak == cap, (mx.peak, cap)  # reached, never passed


async def test_too_many_connections_at_the_greeting_leaves_the_mail_to_the_others() -> None:
    """Two sources of 20 and a site cap of 40, against a server that takes 20: every
    message is delivered at its first attempt, none deferred, and nothing backs off."""
    mx = Mx(limit=20)
    async with Scripted(mx) as server:
        s = two_sources(server.port, "max_mx_connections = 40")
        try:
            outcomes = await deliver_all(s)
            queues = list(s.queues.values())
        finally:
            await s.close()
    assert mx.refused > 0  # the sender did reach the server's limit
    assert outcomes == [(250, True)] * MESSAGES  # no deferral, untried mail never counted
    assert not any(q.backing_off() for q in queues)
    assert mx.peak <= 20 and mx.delivered == MESSAGES
    print(f"refused at the greeting: {mx.refused}; peak {mx.peak}")
