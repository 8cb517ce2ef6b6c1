"""The seam between a message's lifecycle and whatever delivers its recipients.

`Transport` is the port; `Attempt` and `Path` are what comes back through it. The
scheduler (quiver.scheduler) implements the port with ready queues and reused
connections; unit tests implement it with scripted replies. It sits below both so
neither half of the engine imports the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

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
class Labels:
    """The tenant and campaign of the message being delivered."""

    tenant: str | None = None
    campaign: str | None = None


NO_LABELS = Labels()
# Set by the lifecycle around each message's delivery, read by whoever watches its
# attempts (the adaptive engine's tenant and campaign rules) without the transport's
# signature carrying labels it does not route by. Tasks started under it inherit it.
MESSAGE_LABELS: ContextVar[Labels] = ContextVar("quiver_message_labels", default=NO_LABELS)


@dataclass(frozen=True, slots=True)
class Hold:
    """An operator control (a pause, a stop) held a recipient back before its
    transaction: not tried, it goes back to the queue until `until` (epoch seconds),
    with `why` (naming the control) as its last reply."""

    until: float
    why: str


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
    # Set when an operator control held it back (never with `counts`).
    hold: Hold | None = None
    # When its transaction went on the wire: the bytes of the message sent (the 7-bit
    # form, for a server without 8BITMIME) and the transaction's milliseconds.
    size: int | None = None
    transaction_ms: int | None = None

    def delivery_fields(self) -> EventFields:
        fields = self.path.fields.copy()
        fields["response"] = self.reply.as_event()
        fields["transaction_ms"] = self.transaction_ms
        return fields


class Transport(Protocol):
    async def deliver(
        self, *, pool: str, domain: str, sender: str, recipients: Sequence[str], message: bytes,
        seven_bit: Callable[[], Awaitable[bytes]] | None = None,
    ) -> list[Attempt]:
        """Attempt delivery of `recipients` (all at `domain`); one Attempt each.

        `seven_bit` is None when `message` is 7-bit. Otherwise `message` has 8-bit data
        and goes with BODY=8BITMIME to a server that offers 8BITMIME (RFC 6152); for
        one that does not, `seven_bit()` gives the converted, re-signed message to send.
        """
        ...
