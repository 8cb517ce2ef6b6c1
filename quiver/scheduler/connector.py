"""Opening a connection for a ready queue: egress choice, MX host order, TLS policy."""

from __future__ import annotations

import ssl
from dataclasses import replace

from quiver.policy import Policy, Source
from quiver.routing.mx import Route
from quiver.routing.safety import DestinationGuard
from quiver.sender.outcome import Path
from quiver.smtp.reply import local_reply
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

# Connection-level failures try this many MX addresses before the attempt fails.
# Addresses the destination guard forbids are skipped without using a try.
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
        """A session to the first MX address that answers; SessionError from the last try,
        its text naming the addresses skipped as forbidden (stage 'forbidden' if every
        address was)."""
        template = self.template(source, route)
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
                session = await SmtpSession.open(
                    target=target,
                    egress=self.egress(source),
                    guard=self._guard,
                    tls_context=self._tls,
                    connect_timeout=self._policy.delivery.connect_timeout,
                    command_timeout=self._policy.delivery.command_timeout,
                )
            except SessionError as exc:
                exc.target = exc.target or target
                if exc.stage == "forbidden":  # the session's own guard: nothing connected
                    skipped.append(f"{target.mx_name} {exc.reply.text}")
                else:
                    last = exc
                continue
            return session, replace(template, mx=target.mx_name, mx_ip=target.ip,
                                    tls=session.tls_version)
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
