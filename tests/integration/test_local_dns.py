"""The local DNS servers (builtin and dnsmasq) answering dnspython's resolver over loopback."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.query
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.servers.dns_dnsmasq import dnsmasq_binary
from quiver.devstack.servers.dns_records import add_records, parse_records
from quiver.devstack.stack import add_demo_records

pytestmark = pytest.mark.integration


def dkim_2048_value() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


DKIM = dkim_2048_value()


def make_zone() -> Zone:
    zone = Zone()
    zone.add_mx("alpha.test", "mx1.quiver.local.test", 10)
    zone.add_mx("delta.test", "mx2.quiver.local.test", 10)
    zone.add_mx("delta.test", "mx1.quiver.local.test", 20)
    zone.add_null_mx("nullmx.test")
    zone.add_a("mx1.quiver.local.test", "127.0.0.1")
    zone.add_a("mx2.quiver.local.test", "127.0.0.2", ttl=60)
    zone.add_a("nomx.test", "127.0.0.1")
    zone.add_txt("alpha.test", "v=spf1 ip4:127.0.0.0/8 -all")
    zone.add_txt("sel._domainkey.alpha.test", DKIM)
    return zone


@pytest.fixture(params=["builtin", "dnsmasq"])
def server(request: pytest.FixtureRequest) -> Iterator[DnsServer]:
    if request.param == "dnsmasq" and dnsmasq_binary() is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    running = start_dns(make_zone(), prefer=request.param)
    assert running.kind == request.param, running.fallback_reason
    yield running
    running.stop()


def resolver_for(server: DnsServer) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.address[0]]
    resolver.port = server.address[1]
    resolver.lifetime = 10
    return resolver


async def test_mx_with_preferences(server: DnsServer) -> None:
    answer = await resolver_for(server).resolve("delta.test", "MX")
    assert sorted((r.preference, r.exchange.to_text()) for r in answer) == [
        (10, "mx2.quiver.local.test."), (20, "mx1.quiver.local.test."),
    ]
    assert answer.rrset is not None and answer.rrset.ttl == 300


async def test_null_mx(server: DnsServer) -> None:
    answer = await resolver_for(server).resolve("nullmx.test", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in answer] == [(0, ".")]


async def test_a_records_with_their_ttl(server: DnsServer) -> None:
    resolver = resolver_for(server)
    one = await resolver.resolve("mx1.quiver.local.test", "A")
    assert [r.address for r in one] == ["127.0.0.1"]
    two = await resolver.resolve("MX2.Quiver.Local.Test", "A")
    assert [r.address for r in two] == ["127.0.0.2"]
    assert two.rrset is not None and two.rrset.ttl == 60


async def test_txt_records_including_a_dkim_2048_key(server: DnsServer) -> None:
    resolver = resolver_for(server)
    spf = await resolver.resolve("alpha.test", "TXT")
    assert [b"".join(r.strings) for r in spf] == [b"v=spf1 ip4:127.0.0.0/8 -all"]
    dkim = await resolver.resolve("sel._domainkey.alpha.test", "TXT")
    [record] = list(dkim)
    assert len(record.strings) == 2  # over 255 bytes, so split
    assert b"".join(record.strings).decode() == DKIM


async def test_unknown_names_are_nxdomain(server: DnsServer) -> None:
    resolver = resolver_for(server)
    for name in ("nope.alpha.test", "unknown.example.invalid", "gmail.com"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve(name, "A")


async def test_a_without_mx_is_no_answer(server: DnsServer) -> None:
    resolver = resolver_for(server)
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("nomx.test", "MX")
    # An empty non-terminal exists too: NODATA, not NXDOMAIN.
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("_domainkey.alpha.test", "TXT")


async def test_large_answer_truncates_over_udp_and_resolves_over_tcp() -> None:
    zone = make_zone()
    for i in range(60):
        zone.add_a("many.quiver.local.test", f"127.0.2.{i}")
    server = start_dns(zone, prefer="builtin")
    try:
        query = dns.message.make_query("many.quiver.local.test", "A", use_edns=False)
        over_udp = dns.query.udp(query, server.address[0], port=server.address[1], timeout=5)
        assert over_udp.flags & dns.flags.TC
        answer = await resolver_for(server).resolve("many.quiver.local.test", "A")
        assert len(answer) == 60
    finally:
        server.stop()


def test_dnsmasq_falls_back_to_builtin_for_a_zone_it_cannot_carry() -> None:
    if dnsmasq_binary() is None:
        # It would fall back all the same, for another reason: nothing proved.
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    zone = make_zone()
    zone.add_txt("comma.test", "a,b")
    server = start_dns(zone, prefer="dnsmasq")
    try:
        assert server.kind == "builtin"
        # Because of the comma, not because dnsmasq failed or is missing.
        reason = server.fallback_reason or ""
        assert "TXT at comma.test" in reason and "a comma" in reason, reason
        query = dns.message.make_query("comma.test", "TXT")
        reply = dns.query.udp(query, server.address[0], port=server.address[1], timeout=5)
        assert [b"".join(r.strings) for r in reply.answer[0]] == [b"a,b"]
    finally:
        server.stop()


def test_builtin_when_asked_says_so_without_a_reason() -> None:
    server = start_dns(make_zone(), prefer="builtin")
    try:
        assert (server.kind, server.fallback_reason) == ("builtin", None)
    finally:
        server.stop()


EXTRA = """
[[record]]
name = "partner.test"
type = "MX"
value = "mx.partner.test"
preference = 5

[[record]]
name = "partner.test"
type = "MX"
value = "mx1.quiver.local.test"
preference = 20

[[record]]
name = "mx.partner.test"
type = "A"
value = "127.0.0.7"

[[record]]
name = "mx.partner.test"
type = "AAAA"
value = "::1"

[[record]]
name = "partner.test"
type = "TXT"
value = "v=spf1 ip4:127.0.0.7 -all"

[[record]]
name = "closed.test"
type = "MX"
value = "."
"""


@pytest.mark.parametrize("kind", ["builtin", "dnsmasq"])
async def test_extra_records_are_served_beside_the_demo_zone(kind: str) -> None:
    if kind == "dnsmasq" and dnsmasq_binary() is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    zone = Zone()
    add_demo_records(zone)
    add_records(zone, parse_records(EXTRA))
    server = start_dns(zone, prefer=kind)  # type: ignore[arg-type]
    try:
        assert server.kind == kind, server.fallback_reason
        resolver = resolver_for(server)
        mx = await resolver.resolve("partner.test", "MX")
        assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
            (5, "mx.partner.test."), (20, "mx1.quiver.local.test."),
        ]
        assert [r.address for r in await resolver.resolve("mx.partner.test", "A")] == [
            "127.0.0.7"]
        assert [r.address for r in await resolver.resolve("mx.partner.test", "AAAA")] == ["::1"]
        txt = await resolver.resolve("partner.test", "TXT")
        assert [b"".join(r.strings) for r in txt] == [b"v=spf1 ip4:127.0.0.7 -all"]
        closed = await resolver.resolve("closed.test", "MX")
        assert [(r.preference, r.exchange.to_text()) for r in closed] == [(0, ".")]
        # The demo zone is still there.
        alpha = await resolver.resolve("alpha.test", "MX")
        assert [r.exchange.to_text() for r in alpha] == ["mx1.quiver.local.test."]
    finally:
        server.stop()
