"""The seam between a message's lifecycle and whatever delivers its recipients.

The scheduler (quiver.scheduler) implements it with ready queues and reused
connections; unit tests implement it with scripted replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from quiver.sender.outcome import Attempt


class Transport(Protocol):
    async def deliver(
        self, *, pool: str, domain: str, sender: str, recipients: Sequence[str], message: bytes
    ) -> list[Attempt]:
        """Attempt delivery of `recipients` (all at `domain`); one Attempt each."""
        ...
