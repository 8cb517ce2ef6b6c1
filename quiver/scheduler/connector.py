"""Opening a connection for a ready queue: egress choice, MX host order, TLS policy."""

from __future__ import annotations

import ssl
from dataclasses import replace

from quiver.policy import Policy, Source
from quiver.routing.mx import Route
from quiver.routing.safety import DestinationGuard
from quiver.sender.outcome import Path
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

# Connection-level failures try this many MX addresses before the attempt fails.
MAX_CONNECT_TRIES = 3


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


class Connector:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._guard = DestinationGuard(policy.delivery.allow_networks)
        self._tls = tls_context_for(policy)

    def egress(self, source: Source) -> Egress:
        return Egress(
            ehlo=source.ehlo,
            local_ip=source.local_ip if source.node is None else None,
            frontend=self._policy.frontend(source),
            proxy_version=self._policy.proxy.protocol,
        )

    def template(self, source: Source, route: Route) -> Path:
        """The event fields every attempt through this (source, site) shares."""
        return Path(source=source.name, source_ip=source.ip, proxy=source.node,
                    site=route.site, provider=route.provider)

    async def open(self, source: Source, route: Route) -> tuple[SmtpSession, Path]:
        """A session to the first MX address that answers; SessionError from the last try."""
        template = self.template(source, route)
        last: SessionError | None = None
        targets = [(h.name, ip, h.port or self._policy.delivery.port)
                   for h in route.hosts for ip in h.addresses]
        for host, ip, port in targets[:MAX_CONNECT_TRIES]:
            try:
                session = await SmtpSession.open(
                    target=Target(mx_name=host, ip=ip, port=port),
                    egress=self.egress(source),
                    guard=self._guard,
                    tls_context=self._tls,
                    connect_timeout=self._policy.delivery.connect_timeout,
                    command_timeout=self._policy.delivery.command_timeout,
                )
            except SessionError as exc:
                exc.target = exc.target or Target(mx_name=host, ip=ip, port=port)
                last = exc
                continue
            return session, replace(template, mx=host, mx_ip=ip, tls=session.tls_version)
        assert last is not None
        raise last
