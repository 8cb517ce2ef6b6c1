"""Destination-address safety: never connect to private, loopback, link-local or
metadata addresses unless the policy allows that network explicitly.

The check runs on the exact IP about to be connected, after MX resolution: a
hostile domain can publish `MX 10 internal.example` resolving to 10.0.0.5 or
169.254.169.254, and the sender must not become a way into the VPC.

It runs first on the resolved route, before an egress source is chosen (`screen`):
forbidden addresses are dropped there, so they cost no connection try and no
proxy or source is ever blamed for them, and a domain with nothing else is
refused at once. The session checks the exact IP again before connecting.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache

from quiver.routing.mx import Route, RouteError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORBIDDEN: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local / instance metadata"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fd00:ec2::254/128", "instance metadata"),
        ("ff00::/8", "multicast"),
    )
)


class UnsafeDestination(ValueError):
    pass


class ForbiddenRoute(RouteError):
    """Every address of every MX of the domain is forbidden: a permanent refusal made
    here, before any connection (so no recipient was tried at the destination)."""

    def __init__(self, text: str) -> None:
        super().__init__(permanent=True, enhanced="5.4.4", text=text)


class DestinationGuard:
    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        self._allow = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        self._reason = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, ip: str) -> str | None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self._allow):
            return None
        for net, why in _FORBIDDEN:
            if addr.version == net.version and addr in net:
                return f"{ip} is {why} ({net})"
        return None

    def reason(self, ip: str) -> str | None:
        """Why `ip` must not be connected to, or None if it may be."""
        return self._reason(ip)

    def check(self, ip: str) -> None:
        if (why := self.reason(ip)) is not None:
            raise UnsafeDestination(why)


# IPv4-mapped IPv6 addresses (::ffff:a.b.c.d): the guard above reads them as IPv4,
# and so does HAProxy, so an IPv6 network over them opens the IPv4 ranges inside.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def forbidden_ranges() -> tuple[tuple[IPNetwork, str], ...]:
    """The forbidden table: (network, what it is), one source for every check."""
    return _FORBIDDEN


def forbidden_overlaps(network: str | IPNetwork) -> list[tuple[IPNetwork, str]]:
    """The forbidden ranges that `network` shares at least one address with.

    An allow-list entry that overlaps one of them would let the sender (or a proxy)
    connect into it: `0.0.0.0/0` and `::/0` overlap them all. Raises ValueError
    for something that is not a network.
    """
    net = ipaddress.ip_network(network, strict=False) if isinstance(network, str) else network
    candidates: list[IPNetwork] = [net]
    if isinstance(net, ipaddress.IPv6Network) and net.overlaps(_IPV4_MAPPED):
        if net.prefixlen >= _IPV4_MAPPED.prefixlen:
            low32 = int(net.network_address) & 0xFFFFFFFF
            candidates.append(ipaddress.IPv4Network((low32, net.prefixlen - 96)))
        else:
            candidates.append(ipaddress.IPv4Network("0.0.0.0/0"))
    return [
        (forbidden, why)
        for forbidden, why in _FORBIDDEN
        if any(c.version == forbidden.version and c.overlaps(forbidden) for c in candidates)
    ]


def screen(route: Route, guard: DestinationGuard) -> Route:
    """`route` without the addresses `guard` forbids (MX hosts left with none dropped,
    each one left out named in `forbidden`); ForbiddenRoute if nothing is left."""
    if all(guard.reason(ip) is None for host in route.hosts for ip in host.addresses):
        return route  # the common case: no copy
    hosts = []
    forbidden = list(route.forbidden)
    for host in route.hosts:
        allowed = []
        for ip in host.addresses:
            why = guard.reason(ip)
            if why is None:
                allowed.append(ip)
            else:
                forbidden.append(f"{host.name} {why}")
        if allowed:
            hosts.append(replace(host, addresses=tuple(allowed)))
    if not hosts:
        raise ForbiddenRoute(
            f"refusing to connect to any MX of {route.domain}: {'; '.join(forbidden)}")
    return replace(route, hosts=tuple(hosts), forbidden=tuple(forbidden))
