"""PTR records in the local DNS servers: builtin and dnsmasq answer the same."""

from __future__ import annotations

import dns.resolver
import dns.reversename
import pytest

from quiver.devstack.servers.dns import Zone, start_dns
from quiver.devstack.servers.dns_dnsmasq import ZoneNotExpressible, dnsmasq_binary, zone_args

pytestmark = pytest.mark.integration


def zone() -> Zone:
    z = Zone()
    z.add_a("tx1.example.test", "192.0.2.11")
    z.add_ptr("192.0.2.11", "tx1.example.test")
    z.add_ptr("192.0.2.50", "elsewhere.example.test")  # a PTR with no A beside it
    z.add_aaaa("tx6.example.test", "2001:db8::11")
    z.add_ptr("2001:db8::11", "tx6.example.test")
    return z


def ptr(address: tuple[str, int], ip: str) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address[0]]
    resolver.port = address[1]
    resolver.lifetime = 10
    try:
        answer = resolver.resolve(dns.reversename.from_address(ip), "PTR")
    except dns.resolver.NXDOMAIN:
        return []
    return sorted(r.to_text() for r in answer)


@pytest.mark.parametrize("kind", ["builtin", "dnsmasq"])
def test_ptr_answers(kind: str) -> None:
    if kind == "dnsmasq" and dnsmasq_binary() is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    server = start_dns(zone(), prefer=kind)  # type: ignore[arg-type]
    try:
        assert server.kind == kind, server.fallback_reason
        assert ptr(server.address, "192.0.2.11") == ["tx1.example.test."]
        assert ptr(server.address, "192.0.2.50") == ["elsewhere.example.test."]
        assert ptr(server.address, "2001:db8::11") == ["tx6.example.test."]
        assert ptr(server.address, "192.0.2.99") == []
    finally:
        server.stop()


def test_dnsmasq_refuses_a_zone_whose_address_lacks_its_ptr() -> None:
    z = zone()
    z.add_a("tx2.example.test", "192.0.2.12")  # --host-record would invent its PTR
    with pytest.raises(ZoneNotExpressible, match=r"192\.0\.2\.12"):
        zone_args(z)
    server = start_dns(z)
    try:
        assert server.kind == "builtin"
        assert ptr(server.address, "192.0.2.12") == []
    finally:
        server.stop()
