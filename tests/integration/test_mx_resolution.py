"""MX resolution over the DNS protocol against the local DNS server."""

from __future__ import annotations

import asyncio

import pytest

from quiver.devstack.servers.dns import Zone, start_dns
from quiver.routing.mx import MxResolver, RouteError
from quiver.routing.providers import ProviderMatcher
from quiver.routing.safety import DestinationGuard

pytestmark = pytest.mark.integration


def zone(ip: str = "198.51.100.25", ttl: int = 300) -> Zone:
    z = Zone()
    z.add_mx("example.test", "mx2.example.test", 20, ttl=ttl)
    z.add_mx("example.test", "mx1.example.test", 10, ttl=ttl)
    z.add_mx("shared.test", "mx1.example.test", 10, ttl=ttl)
    z.add_a("mx1.example.test", ip, ttl=ttl)
    z.add_a("mx2.example.test", "198.51.100.26", ttl=ttl)
    z.add_null_mx("nomail.test")
    z.add_a("bare.test", "198.51.100.30")
    z.add_mx("private.test", "internal.private.test")
    z.add_a("internal.private.test", "10.1.2.3")
    z.add_mx("xn--bcher-kva.test", "mx1.example.test")
    z.add_mx("google-hosted.test", "aspmx.l.google.test")
    z.add_a("aspmx.l.google.test", "198.51.100.40")
    return z


def resolver(server, **kw) -> MxResolver:
    return MxResolver(nameservers=[server.address], timeout=3.0, **kw)


async def test_routes_null_mx_nxdomain_and_a_fallback() -> None:
    server = start_dns(zone(), prefer="builtin")
    try:
        r = resolver(server, providers=ProviderMatcher({"google": ["*.google.test"]}))
        route = await r.route("example.test")
        assert [h.name for h in route.hosts] == ["mx1.example.test", "mx2.example.test"]
        assert route.hosts[0].addresses == ("198.51.100.25",)
        assert route.site == "mx1.example.test,mx2.example.test"
        # Domains sharing an MX set share a site.
        assert (await r.route("shared.test")).site == "mx1.example.test"
        assert (await r.route("xn--bcher-kva.test")).site == "mx1.example.test"
        assert (await r.route("google-hosted.test")).provider == "google"
        with pytest.raises(RouteError) as null:
            await r.route("nomail.test")
        assert null.value.permanent and null.value.enhanced == "5.1.10"
        with pytest.raises(RouteError) as nx:
            await r.route("missing.test")
        assert nx.value.permanent and nx.value.enhanced == "5.1.2"
        bare = await r.route("bare.test")
        assert [(h.name, h.addresses) for h in bare.hosts] == [("bare.test", ("198.51.100.30",))]
        private = await r.route("private.test")
        assert DestinationGuard().reason(private.hosts[0].addresses[0]) is not None
    finally:
        server.stop()


async def test_a_domain_s_provider_is_its_route_s_or_none_without_a_route() -> None:
    """What the FBL intake asks of a complained-about recipient's domain."""
    server = start_dns(zone(), prefer="builtin")
    try:
        r = resolver(server, providers=ProviderMatcher({"google": ["*.google.test"]}))
        assert await r.provider("google-hosted.test") == "google"
        assert await r.provider("example.test") is None  # no provider's patterns match
        assert await r.provider("missing.test") is None  # NXDOMAIN: no route
        assert await r.provider("nomail.test") is None  # null MX
    finally:
        server.stop()


def test_one_resolver_serves_an_event_loop_per_call() -> None:
    """The FBL Lambda keeps one resolver and runs each object in asyncio.run."""
    server = start_dns(zone(), prefer="builtin")
    try:
        r = resolver(server, providers=ProviderMatcher({"google": ["*.google.test"]}))
        assert [asyncio.run(r.provider(d)) for d in
                ("google-hosted.test", "example.test", "google-hosted.test")] == [
            "google", None, "google"]
    finally:
        server.stop()


async def test_unreachable_dns_is_a_temporary_failure() -> None:
    r = MxResolver(nameservers=[("127.0.0.1", 9)], timeout=1.0)
    with pytest.raises(RouteError) as info:
        await r.route("example.test")
    assert not info.value.permanent and info.value.enhanced == "4.4.3"


async def test_answers_are_cached_by_ttl_and_concurrent_lookups_share_one() -> None:
    server = start_dns(zone(ttl=300), prefer="builtin")
    port = server.address[1]
    r = resolver(server)
    try:
        first = await asyncio.gather(*(r.route("example.test") for _ in range(20)))
        assert len({id(x) for x in first}) == 1  # one lookup served all twenty
    finally:
        server.stop()
    # The server is gone: the cached answer (TTL 300 s) still routes.
    assert (await r.route("example.test")).hosts[0].addresses == ("198.51.100.25",)

    now = [1000.0]  # the resolver's clock, moved by the test
    short = start_dns(zone(ttl=5), prefer="builtin", port=port)
    r2 = MxResolver(nameservers=[short.address], timeout=3.0, clock=lambda: now[0])
    try:
        assert (await r2.route("example.test")).hosts[0].addresses == ("198.51.100.25",)
    finally:
        short.stop()
    changed = start_dns(zone(ip="198.51.100.99", ttl=5), prefer="builtin", port=port)
    try:
        now[0] += 4.9  # within the 5 s TTL (the resolver's floor): still the cached answer
        assert (await r2.route("example.test")).hosts[0].addresses == ("198.51.100.25",)
        now[0] += 0.2  # past it: looked up again
        assert (await r2.route("example.test")).hosts[0].addresses == ("198.51.100.99",)
    finally:
        changed.stop()
