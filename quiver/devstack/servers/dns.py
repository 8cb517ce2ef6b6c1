"""The local DNS server: answers the sender's MX, A and TXT lookups on loopback.

The sender resolves with dnspython over the DNS protocol exactly as in
production; only the nameserver address differs. `start_dns` runs dnsmasq
when it is installed and can carry the zone exactly, and the builtin
responder otherwise; `.kind` says which one runs and `.fallback_reason` why
dnsmasq was not used.
"""

from __future__ import annotations

from typing import Literal, Protocol

from quiver.devstack.servers.dns_builtin import (
    START_TIMEOUT,
    BuiltinDnsServer,
    wait_until_answering,
)
from quiver.devstack.servers.dns_dnsmasq import (
    DnsmasqFailed,
    DnsmasqServer,
    ZoneNotExpressible,
    dnsmasq_binary,
)
from quiver.devstack.servers.dns_zone import DEFAULT_TTL, Mx, Record, Zone

__all__ = ["DEFAULT_TTL", "DnsServer", "Mx", "Record", "Zone", "start_dns"]


class DnsServer(Protocol):
    address: tuple[str, int]
    kind: Literal["dnsmasq", "builtin"]
    fallback_reason: str | None

    def stop(self) -> None: ...


def start_dns(
    zone: Zone,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    prefer: Literal["dnsmasq", "builtin"] = "dnsmasq",
) -> DnsServer:
    """Serve `zone` (as it is now) on host:port; returns once the server answers queries.

    Port 0 picks a port free for both UDP and TCP. With prefer="dnsmasq", a
    missing binary, a zone dnsmasq cannot express, or a dnsmasq that does not
    start all fall back to the builtin responder, with the reason recorded.
    """
    reason: str | None = None
    if prefer == "dnsmasq":
        if dnsmasq_binary() is None:
            reason = "dnsmasq is not installed"
        else:
            try:
                return DnsmasqServer(zone, host=host, port=port)
            except (ZoneNotExpressible, DnsmasqFailed) as error:
                reason = str(error)
    server = BuiltinDnsServer(zone, host=host, port=port, fallback_reason=reason)
    if not wait_until_answering(server.address, timeout=START_TIMEOUT):
        server.stop()
        raise RuntimeError(f"the builtin DNS server on {server.address} did not answer")
    return server
