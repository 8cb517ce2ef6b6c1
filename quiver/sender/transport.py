"""The seam between a message's lifecycle and whatever delivers its recipients.

The scheduler (quiver.scheduler) implements it with ready queues and reused
connections; unit tests implement it with scripted replies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from quiver.sender.outcome import Attempt


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
