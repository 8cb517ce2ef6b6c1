"""Whose fault a failed connection is: the proxy's, the destination's, or no one's.

Beside proxy health (health.py), whose probe decides the doubtful case. Through a
proxy, a refused TCP connect means the proxy is unreachable; a connection closed
before the banner means the proxy could not reach the MX or is itself failing: its
health endpoint says which. A proxy's failure suspends the source and sends the jobs
to other sources; a destination's backs off its (source, site); an address the
destination guard forbids is neither's, since nothing was connected. The ready queue
acts on the verdict (ready.py: reroute, back off, or finish the jobs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import assert_never

from quiver.smtp.reply import Reply, local_reply
from quiver.smtp.session import SessionError


@dataclass(frozen=True, slots=True)
class Forbidden:
    """Refused here before connecting: no proxy or source is at fault, no retry helps."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ProxyDown:
    """The source's proxy node is unreachable or unhealthy."""

    node: str
    reply: Reply  # the local 451 the rerouted (or deferred) jobs carry

    @property
    def why(self) -> str:
        return self.reply.text


@dataclass(frozen=True, slots=True)
class DestinationFailed:
    """The destination refused or dropped the connection; `reply` says so."""

    reply: Reply


Fault = Forbidden | ProxyDown | DestinationFailed


async def attribute(
    exc: SessionError, *, node: str | None, mx: str | None,
    proxy_check: Callable[[str], Awaitable[bool]] | None,
) -> Fault:
    """The fault of a connection that failed to open. `node` is the source's proxy
    node (None: connected directly), `mx` the MX it was for."""
    reply = exc.reply
    match exc.stage:
        case "forbidden":
            return Forbidden(reply)
        case "connect" | "banner" if node is not None:
            proxy_ok = exc.stage == "banner" and (proxy_check is None or await proxy_check(node))
            if not proxy_ok:
                why = f"proxy {node} unreachable or unhealthy: {reply.text}"
                return ProxyDown(node, local_reply(451, "4.4.1", why))
            return DestinationFailed(local_reply(
                reply.code, reply.enhanced or "4.4.2",
                f"destination {mx} closed the connection before its banner "
                f"(proxy {node} is healthy): {reply.text}",
            ))
        case "connect" | "banner" | "greeting" | "ehlo" | "tls":
            # A server refusing its greeting or EHLO may take mail later, or another of
            # its MXes may: deferred, never bounced.
            return DestinationFailed(reply)
        case "transaction" | "reused" | "closed":
            # Raised by a send, not by opening; the destination's, should it reach here.
            return DestinationFailed(reply)
        case _:
            assert_never(exc.stage)
