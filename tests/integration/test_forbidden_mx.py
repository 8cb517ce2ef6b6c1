"""Forbidden MX addresses through the scheduler, against the local DNS server and a
scripted MX on loopback: they are skipped before any connection and cost no connection
try, so a good MX of lower preference still gets the mail; a domain whose every MX
address is forbidden is bounced at once, without a ready queue; and a refused primary
beside a forbidden backup is deferred with both named.

The MXes live on 127.0.0.1 (allowed, as the local stack allows loopback); 10/8 and
169.254/16 stand for a hostile zone aiming the sender at the VPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from test_smtp_wire import MESSAGE, Scripted

from quiver.delivery import Attempt
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler

pytestmark = pytest.mark.integration

ZONE = (
    # MX 10 with three forbidden addresses, MX 20 good.
    ("fallback.test", 10, "bad.fallback.test", ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
    ("fallback.test", 20, "good.fallback.test", ("127.0.0.1",)),
    # MX 10 refuses connections (nothing listens on 127.0.0.9), MX 20 forbidden.
    ("refused.test", 10, "primary.refused.test", ("127.0.0.9",)),
    ("refused.test", 20, "backup.refused.test", ("169.254.169.254",)),
    # Nothing allowed at all.
    ("evil.test", 10, "a.evil.test", ("10.0.0.5",)),
    ("evil.test", 20, "b.evil.test", ("169.254.169.254",)),
    # A plain good one.
    ("good.test", 10, "mx.good.test", ("127.0.0.1",)),
)


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    zone = Zone()
    for domain, preference, host, addresses in ZONE:
        zone.add_mx(domain, host, preference)
        for address in addresses:
            zone.add_a(host, address)
    server = start_dns(zone, prefer="builtin")
    try:
        yield server
    finally:
        server.stop()


def scheduler(dns: DnsServer, port: int, extra: str = "") -> Scheduler:
    policy = parse_policy(f"""
# Loopback MXes: only a local_only policy may allow 127.0.0.0/8.
local_only = true
default_pool = "p"
[delivery]
port = {port}
connect_timeout = "5s"
command_timeout = "10s"
allow_networks = ["127.0.0.0/8"]
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.quiver.test"
[pools.p]
sources = ["a"]
{extra}
""")
    return Scheduler(policy=policy, picker=SourcePicker(policy),
                     resolver=MxResolver(nameservers=[dns.address], timeout=5.0))


async def deliver(s: Scheduler, domain: str, recipients: list[str]) -> list[Attempt]:
    return await asyncio.wait_for(s.deliver(
        pool="p", domain=domain, sender="a@news.test", recipients=recipients,
        message=MESSAGE), 30)


async def test_three_forbidden_addresses_on_mx_10_cost_no_try_and_mx_20_delivers(
        dns: DnsServer) -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.accept(reader, writer)

    async with Scripted(script) as server:
        s = scheduler(dns, server.port)
        try:
            (attempt,) = await deliver(s, "fallback.test", ["u@fallback.test"])
        finally:
            await s.close()
    assert attempt.reply.code == 250, attempt.reply
    assert (attempt.path.mx, attempt.path.mx_ip) == ("good.fallback.test", "127.0.0.1")
    assert attempt.counts


async def test_a_refused_primary_with_a_forbidden_backup_is_deferred_naming_both(
        dns: DnsServer) -> None:
    async def script(reader, writer):
        raise AssertionError("nothing listens for primary.refused.test on 127.0.0.9")

    async with Scripted(script) as server:
        port = server.port
        s = scheduler(dns, port)
        try:
            (attempt,) = await deliver(s, "refused.test", ["u@refused.test"])
        finally:
            await s.close()
    reply = attempt.reply
    assert reply.transient, reply  # deferred: the primary may take it later
    assert f"127.0.0.9:{port}" in reply.text, reply  # the primary's failure
    assert "backup.refused.test 169.254.169.254 is link-local" in reply.text, reply
    assert attempt.path.mx == "primary.refused.test"
    assert attempt.counts  # its connection was tried (and refused)


async def test_a_domain_whose_every_mx_address_is_forbidden_bounces_without_a_queue(
        dns: DnsServer) -> None:
    async def script(reader, writer):
        raise AssertionError("no connection may be made")

    async with Scripted(script) as server:
        s = scheduler(dns, server.port)
        try:
            attempts = await deliver(s, "evil.test", ["u@evil.test", "v@evil.test"])
            queues = dict(s.queues)
        finally:
            await s.close()
    for attempt in attempts:
        assert (attempt.reply.code, attempt.reply.enhanced) == (550, "5.4.4"), attempt.reply
        assert "a.evil.test 10.0.0.5 is private (10.0.0.0/8)" in attempt.reply.text
        assert "169.254.169.254 is link-local / instance metadata" in attempt.reply.text
        assert not attempt.counts  # refused here: nothing was tried at the destination
    assert queues == {}  # decided before a source or a ready queue was involved


async def test_a_failed_connection_is_the_attempt_of_the_job_it_was_opened_for_only(
        dns: DnsServer) -> None:
    """A server refusing in its greeting: the first queued job's connection failed (its
    attempt counts); the jobs queued behind it are deferred untried, and so is one that
    arrives during the backoff."""
    greeted = 0

    async def script(reader, writer):
        nonlocal greeted
        greeted += 1
        writer.write(b"554 5.7.1 mx.good.test no service for you\r\n")
        await writer.drain()

    async with Scripted(script) as server:
        s = scheduler(dns, server.port, '[[throttles]]\nsource = "*"\nmax_connections = 1')
        try:
            first, second, third = await asyncio.gather(
                *(deliver(s, "good.test", [f"u{n}@good.test"]) for n in range(3)))
            (later,) = await deliver(s, "good.test", ["late@good.test"])
        finally:
            await s.close()
    assert greeted == 1
    assert [a.counts for a in (*first, *second, *third, later)] == [True, False, False, False]
    assert all(a.reply.transient for a in (*first, *second, *third, later))
    assert "no service for you" in first[0].reply.text
    assert "backing off" in later.reply.text
