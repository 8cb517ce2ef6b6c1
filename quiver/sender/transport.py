"""Delivery of one message's recipients at one domain: route, egress, SMTP.

This is the seam the scheduler replaces: it opens a connection per call. The
lifecycle only needs `deliver(...) -> list[Attempt]`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from quiver.policy import Policy, Source
from quiver.routing.mx import MxResolver, Route, RouteError
from quiver.routing.safety import DestinationGuard
from quiver.routing.sources import NoSourceAvailable, SourcePicker
from quiver.sender.outcome import Attempt
from quiver.smtp.reply import Reply, local_reply
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

# Connection-level failures try this many MX addresses before giving up the attempt.
MAX_CONNECT_TRIES = 3


class Transport(Protocol):
    async def deliver(
        self, *, pool: str, domain: str, sender: str, recipients: Sequence[str], message: bytes
    ) -> list[Attempt]: ...


def tls_context_for(policy: Policy) -> ssl.SSLContext:
    """Verified TLS (the MX name must match) or opportunistic, as the policy says."""
    if policy.delivery.verify_tls:
        context = ssl.create_default_context(cafile=policy.delivery.tls_ca_file)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class DirectTransport:
    def __init__(
        self,
        *,
        policy: Policy,
        resolver: MxResolver,
        picker: SourcePicker,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._picker = picker
        self._guard = DestinationGuard(policy.delivery.allow_networks)
        self._tls = tls_context_for(policy)

    def egress(self, source: Source) -> Egress:
        return Egress(
            ehlo=source.ehlo,
            local_ip=source.local_ip if source.node is None else None,
            frontend=self._policy.frontend(source),
            proxy_version=self._policy.proxy.protocol,
        )

    async def deliver(
        self, *, pool: str, domain: str, sender: str, recipients: Sequence[str], message: bytes
    ) -> list[Attempt]:
        try:
            route = await self._resolver.route(domain)
        except RouteError as exc:
            reply = local_reply(exc.code, exc.enhanced, exc.text)
            return [Attempt(rcpt=r, reply=reply) for r in recipients]
        try:
            source = self._picker.pick(pool)
        except NoSourceAvailable as exc:
            reply = local_reply(451, "4.4.1", str(exc))
            return [Attempt(rcpt=r, reply=reply, counts=False) for r in recipients]

        last: SessionError | None = None
        pending = local_reply(451, "4.4.0", "no MX host was tried")
        template = Attempt(
            rcpt="", reply=pending, source=source.name, source_ip=source.ip,
            proxy=source.node, site=route.site, provider=route.provider,
        )
        for host, ip, port in _targets(route, self._policy.delivery.port)[:MAX_CONNECT_TRIES]:
            target = Target(mx_name=host, ip=ip, port=port)
            here = replace(template, mx=host, mx_ip=ip)
            try:
                session = await SmtpSession.open(
                    target=target,
                    egress=self.egress(source),
                    guard=self._guard,
                    tls_context=self._tls,
                    connect_timeout=self._policy.delivery.connect_timeout,
                    command_timeout=self._policy.delivery.command_timeout,
                )
            except SessionError as exc:
                # Connection-level: try the next address of the MX set.
                last, template = exc, here
                continue
            try:
                result = await session.send(sender=sender, recipients=recipients, message=message)
            except SessionError as exc:
                return [
                    replace(here, rcpt=r, reply=exc.reply, tls=session.tls_version)
                    for r in recipients
                ]
            finally:
                await session.close()
            return [
                replace(here, rcpt=r, reply=result.replies[r], tls=session.tls_version)
                for r in recipients
            ]
        assert last is not None
        final: Reply = last.reply
        if final.permanent and last.stage != "connect":
            # A 5xx banner or EHLO from every host tried is about that host, not the
            # recipient: defer, and let the retry schedule decide when to give up.
            final = local_reply(451, "4.4.0", f"all MX hosts failed; last: {final}")
        # A permanent 'connect' reply is the destination guard: every address is in
        # private space, which retrying cannot change, so it bounces.
        return [replace(template, rcpt=r, reply=final) for r in recipients]


def _targets(route: Route, default_port: int) -> list[tuple[str, str, int]]:
    out = []
    for host in route.hosts:
        for ip in host.addresses:
            out.append((host.name, ip, host.port or default_port))
    return out
