"""What happened to one recipient in one attempt, as the lifecycle needs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from quiver.events import EventFields
from quiver.smtp.reply import Reply


@dataclass(frozen=True, slots=True)
class Path:
    """Where an attempt went: the egress and the MX. One per connection, shared by
    every recipient it carries, so an attempt costs a reference, not a copy."""

    source: str | None = None
    source_ip: str | None = None
    proxy: str | None = None
    mx: str | None = None
    mx_ip: str | None = None
    site: str | None = None
    provider: str | None = None
    tls: str | None = None
    # The TLS mode the connection used: the destination's ("opportunistic",
    # "required", "verify") or "plaintext-fallback" (opportunistic, after its MX failed
    # the STARTTLS handshake); None where no TLS policy applied (no route).
    tls_mode: str | None = None
    # The event fields above, built once (keys checked against the event schema).
    fields: EventFields = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields: EventFields = {
            "source": self.source, "source_ip": self.source_ip, "proxy": self.proxy,
            "mx": self.mx, "mx_ip": self.mx_ip, "site": self.site,
            "provider": self.provider, "tls": self.tls, "tls_mode": self.tls_mode,
        }
        object.__setattr__(self, "fields", fields)


NOWHERE = Path()


@dataclass(frozen=True, slots=True)
class Attempt:
    rcpt: str
    reply: Reply
    path: Path = NOWHERE
    # True exactly when this recipient was tried at the destination in this attempt:
    # its own transaction got a reply or was lost mid-way, or a connection opened
    # for its job failed (connect, banner, greeting, EHLO, TLS). False when it never
    # was: drained after another connection's failure, submitted while its (source,
    # site) was backing off, rerouted off a dead proxy, or refused here before any
    # connection (a forbidden MX address, an argument that cannot go on the wire).
    counts: bool = True

    def delivery_fields(self) -> EventFields:
        fields = self.path.fields.copy()
        fields["response"] = self.reply.as_event()
        return fields
