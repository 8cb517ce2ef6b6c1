"""MX resolution over the DNS protocol (dnspython), cached by TTL.

Outcomes follow RFC 5321 5.1 and RFC 7505: MX hosts in preference order; a null
MX (`MX 0 .`) is a permanent failure (5.1.10); no MX falls back to the domain's
own A records; a domain that does not exist is permanent (5.1.2); anything the
resolver could not answer (timeout, SERVFAIL) is temporary (4.4.3).
Only IPv4 addresses are used: every egress source is an IPv4 address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from quiver.routing.providers import ProviderMatcher

# How long to remember that a name has no answer; short, so a fixed zone heals fast.
NEGATIVE_TTL = 60.0
MIN_TTL = 5.0
MAX_TTL = 3600.0
MAX_MX_HOSTS = 10


class RouteError(Exception):
    """No route: `permanent` decides bounce vs defer; `enhanced`/`text` go on the event."""

    def __init__(self, *, permanent: bool, enhanced: str, text: str) -> None:
        self.permanent = permanent
        self.enhanced = enhanced
        self.text = text
        super().__init__(f"{enhanced} {text}")

    @property
    def code(self) -> int:
        return 550 if self.permanent else 451


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str
    preference: int
    addresses: tuple[str, ...]
    port: int | None = None  # set only by static routes


@dataclass(frozen=True, slots=True)
class Route:
    domain: str
    hosts: tuple[MxHost, ...]
    # The set of MX host names: domains that share MXes share a site (and connections).
    site: str
    provider: str | None
    # Addresses left out because the destination guard forbids them, each as
    # "host why" (see routing.safety.screen): reported if the others fail too.
    forbidden: tuple[str, ...] = ()


class MxResolver:
    def __init__(
        self,
        *,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: float = 10.0,
        providers: ProviderMatcher | None = None,
        routes: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Cache expiry reads this clock (seconds; only differences matter).
        self._clock = clock
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [ip for ip, _ in nameservers]
            self._resolver.port = nameservers[0][1]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, 3.0)
        self._providers = providers or ProviderMatcher({})
        self._static = {d.lower(): target for d, target in (routes or {}).items()}
        self._cache: dict[tuple[str, str], tuple[float, object]] = {}
        self._inflight: dict[str, asyncio.Future[Route]] = {}

    async def route(self, domain: str) -> Route:
        """The route for an A-label domain; raises RouteError. Concurrent calls share work."""
        cached = self._cache.get((domain, "route"))
        if cached and cached[0] > self._clock():
            value = cached[1]
            if isinstance(value, RouteError):
                raise value
            assert isinstance(value, Route)
            return value
        pending = self._inflight.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Route] = asyncio.get_running_loop().create_future()
        self._inflight[domain] = future
        try:
            route, ttl = await self._resolve(domain)
        except RouteError as exc:
            self._cache[(domain, "route")] = (self._clock() + NEGATIVE_TTL, exc)
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be none
            raise
        finally:
            del self._inflight[domain]
        self._cache[(domain, "route")] = (self._clock() + ttl, route)
        future.set_result(route)
        return route

    async def provider(self, domain: str) -> str | None:
        """The policy's provider for `domain`, as its route names it; None when no
        provider's patterns match, or the domain has no route now (its DNS fails, or
        it takes no mail)."""
        try:
            return (await self.route(domain)).provider
        except RouteError:
            return None

    async def _resolve(self, domain: str) -> tuple[Route, float]:
        if domain in self._static:
            return await self._static_route(domain)
        try:
            answer = await self._resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise RouteError(
                permanent=True, enhanced="5.1.2", text=f"domain {domain} does not exist"
            ) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 5.1: no MX records, so the domain itself is the implicit MX.
            addresses, ttl = await self._addresses(domain)
            if not addresses:
                raise RouteError(
                    permanent=True, enhanced="5.1.2",
                    text=f"domain {domain} has no MX and no A record",
                ) from None
            host = MxHost(name=domain, preference=0, addresses=addresses)
            return self._make(domain, (host,)), ttl
        except dns.exception.DNSException as exc:
            raise RouteError(
                permanent=False, enhanced="4.4.3", text=f"MX lookup for {domain} failed: {exc}"
            ) from None
        records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
        if (len(records) == 1 and str(records[0].exchange) == ".") or any(
            str(r.exchange) == "." for r in records
        ):
            raise RouteError(
                permanent=True, enhanced="5.1.10",
                text=f"domain {domain} does not accept mail (null MX, RFC 7505)",
            )
        ttl = _ttl(answer)
        names = [(r.preference, str(r.exchange).rstrip(".").lower()) for r in records]
        results = await asyncio.gather(*(self._addresses(n) for _, n in names[:MAX_MX_HOSTS]))
        hosts = []
        for (pref, name), (addresses, a_ttl) in zip(names, results, strict=False):
            ttl = min(ttl, a_ttl)
            if addresses:
                hosts.append(MxHost(name=name, preference=pref, addresses=addresses))
        if not hosts:
            # MX hosts exist but none resolves: usually a transient DNS problem.
            raise RouteError(
                permanent=False, enhanced="4.4.3",
                text=f"no MX host of {domain} has an IPv4 address",
            )
        return self._make(domain, tuple(hosts)), ttl

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], float]:
        try:
            answer = await self._resolver.resolve(name, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return (), NEGATIVE_TTL
        except dns.exception.DNSException as exc:
            raise RouteError(
                permanent=False, enhanced="4.4.3", text=f"A lookup for {name} failed: {exc}"
            ) from None
        return tuple(sorted(r.address for r in answer)), _ttl(answer)

    async def _static_route(self, domain: str) -> tuple[Route, float]:
        target = self._static[domain]
        host, _, port_text = target.partition(":")
        port = int(port_text) if port_text.isdigit() else None
        try:
            ipaddress.ip_address(host)
            addresses: tuple[str, ...] = (host,)
            ttl = MAX_TTL
        except ValueError:
            addresses, ttl = await self._addresses(host)
            if not addresses:
                raise RouteError(
                    permanent=False, enhanced="4.4.3", text=f"route host {host} has no address"
                ) from None
        return self._make(domain, (MxHost(host, 0, addresses, port),)), ttl

    def _make(self, domain: str, hosts: tuple[MxHost, ...]) -> Route:
        names = [h.name for h in hosts]
        return Route(
            domain=domain, hosts=hosts, site=",".join(sorted(names)),
            provider=self._providers.match(names),
        )


def _ttl(answer: dns.resolver.Answer) -> float:
    ttl = answer.rrset.ttl if answer.rrset is not None else MIN_TTL
    return float(min(MAX_TTL, max(MIN_TTL, ttl)))
