"""Opening a connection for a ready queue: egress choice, MX host order, TLS policy."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from quiver.delivery import Path
from quiver.policy import Policy, Source, TlsMode
from quiver.routing.mx import Route
from quiver.routing.safety import DestinationGuard
from quiver.scheduler.tls import (
    PLAINTEXT_FALLBACK,
    FallbackMemory,
    UsedTlsMode,
    unverified_context,
    verifying_context,
)
from quiver.smtp.reply import local_reply
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

if TYPE_CHECKING:
    from quiver.scheduler.ready import Job

log = logging.getLogger("quiver.scheduler")

# Connection-level failures try this many MX addresses before the attempt fails.
# Addresses the destination guard forbids are skipped without using a try.
MAX_CONNECT_TRIES = 3


def tls_context_for(policy: Policy) -> ssl.SSLContext:
    """The context the policy's default TLS mode connects with."""
    return verifying_context(policy) if policy.tls.default == "verify" else unverified_context()


class Connector:
    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic) -> None:
        # Restart-only (policy/handle.py): a reload does not reach this copy.
        self._policy = policy
        self._guard = DestinationGuard(policy.delivery.allow_networks)
        self._verify = verifying_context(policy)
        self._unverified = unverified_context()
        self.fallbacks = FallbackMemory(clock=clock)

    def egress(self, source: Source) -> Egress:
        return Egress(
            ehlo=source.ehlo,
            local_ip=source.local_ip if source.node is None else None,
            frontend=self._policy.frontend(source),
            proxy_version=self._policy.proxy.protocol,
        )

    def template(self, source: Source, route: Route, *,
                 tls_mode: UsedTlsMode | None = None) -> Path:
        """The event fields every attempt through this (source, site) shares."""
        return Path(source=source.name, source_ip=source.ip, proxy=source.node,
                    site=route.site, provider=route.provider, tls_mode=tls_mode)

    async def open(self, source: Source, route: Route, *,
                   tls_mode: TlsMode = "opportunistic") -> tuple[SmtpSession[Job], Path]:
        """A session to the first MX address that answers; SessionError from the last try,
        its text naming the addresses skipped as forbidden (stage 'forbidden' if every
        address was)."""
        template = self.template(source, route, tls_mode=tls_mode)
        skipped = list(route.forbidden)
        targets: list[Target] = []
        for host in route.hosts:
            for ip in host.addresses:
                if (why := self._guard.reason(ip)) is not None:
                    skipped.append(f"{host.name} {why}")
                else:
                    targets.append(Target(mx_name=host.name, ip=ip,
                                          port=host.port or self._policy.delivery.port))
        last: SessionError | None = None
        for target in targets[:MAX_CONNECT_TRIES]:
            try:
                session, used = await self._open(source, target, tls_mode)
            except SessionError as exc:
                exc.target = exc.target or target
                if exc.stage == "forbidden":  # the session's own guard: nothing connected
                    skipped.append(f"{target.mx_name} {exc.reply.text}")
                else:
                    last = exc
                continue
            return session, replace(template, mx=target.mx_name, mx_ip=target.ip,
                                    tls=session.tls_version, tls_mode=used)
        if last is None:
            raise SessionError("forbidden", local_reply(
                550, "5.4.4", f"refusing to connect to any MX of {route.domain}: "
                + "; ".join(skipped)))
        if skipped:
            # Deferred for the address that failed; say which were never tried and why,
            # or the operator sees only half of what happened.
            reply = local_reply(last.reply.code, last.reply.enhanced or "4.4.1",
                                f"{last.reply.text}; not tried: {'; '.join(skipped)}")
            raise SessionError(last.stage, reply, last.target)
        raise last

    async def _open(self, source: Source, target: Target,
                    mode: TlsMode) -> tuple[SmtpSession[Job], UsedTlsMode]:
        """One address in `mode`. Opportunistic: a failed handshake is retried at once in
        plaintext (same attempt), and the address is remembered as failing."""
        if mode == "opportunistic" and self.fallbacks.failed_lately(target.mx_name, target.ip):
            return await self._session(source, target, None, require_tls=False), \
                PLAINTEXT_FALLBACK
        context = self._verify if mode == "verify" else self._unverified
        try:
            session = await self._session(source, target, context,
                                          require_tls=mode != "opportunistic")
        except SessionError as exc:
            if mode != "opportunistic" or exc.stage != "tls":
                raise
            self.fallbacks.remember(target.mx_name, target.ip)
            log.warning("%s %s: STARTTLS failed (%s); opportunistic TLS: sending to it in "
                        "plaintext for %.0f s", target.mx_name, target.ip, exc.reply.text,
                        self.fallbacks.hold)
            session = await self._session(source, target, None, require_tls=False)
            return session, PLAINTEXT_FALLBACK
        # Opportunistic and refused (a 4xx/5xx to STARTTLS): plaintext on this connection.
        return session, PLAINTEXT_FALLBACK if session.tls_refused else mode

    async def _session(self, source: Source, target: Target, context: ssl.SSLContext | None,
                       *, require_tls: bool) -> SmtpSession[Job]:
        return await SmtpSession.open(
            target=target,
            egress=self.egress(source),
            guard=self._guard,
            tls_context=context,
            require_tls=require_tls,
            connect_timeout=self._policy.delivery.connect_timeout,
            command_timeout=self._policy.delivery.command_timeout,
        )
