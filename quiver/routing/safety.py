"""Destination-address safety: never connect to private, loopback, link-local or
metadata addresses unless the policy allows that network explicitly.

The check runs on the exact IP about to be connected, after MX resolution: a
hostile domain can publish `MX 10 internal.example` resolving to 10.0.0.5 or
169.254.169.254, and the sender must not become a way into the VPC.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

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
