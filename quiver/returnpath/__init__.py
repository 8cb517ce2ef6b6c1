"""Signed per-recipient return paths (VERP): `b-<token>@<bounce domain>`.

The sender makes one per recipient of mail whose From domain has a bounce domain
in policy (`ReturnPaths.address`), storing what the token stands for; the bounce
and FBL intakes verify it back (`ReturnPathVerifier`). Token format: token.py;
keys and rotation: keys.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quiver.returnpath import token as token_mod
from quiver.returnpath.keys import (
    RETIRED_GRACE,
    KeyRing,
    KeyRingError,
    ReturnPathKey,
    dump_key_ring,
    load_key_ring,
    parse_key_ring,
    rotated,
)
from quiver.returnpath.verify import (
    REFUSAL_REASONS,
    Refusal,
    RefusalReason,
    ReturnPathVerifier,
    Verified,
)
from quiver.storage.base import ReturnPathRecord

__all__ = [
    "REFUSAL_REASONS", "RETIRED_GRACE", "KeyRing", "KeyRingError", "Refusal", "RefusalReason",
    "ReturnPathKey", "ReturnPathVerifier", "ReturnPaths", "Verified", "dump_key_ring",
    "load_key_ring", "parse_key_ring", "rotated",
]


class ReturnPaths:
    """Makes return paths with the ring's signing key. The ring can be replaced while
    the sender runs (`ring`), so a rotation needs no restart."""

    def __init__(self, ring: KeyRing, *, clock: Callable[[], float] = time.time) -> None:
        self.ring = ring
        self._clock = clock

    def address(self, *, bounce_domain: str, message_id: str, recipient: str,
                tenant: str | None, campaign: str | None) -> tuple[str, ReturnPathRecord]:
        """The return path for one recipient, and the record to store before it is used."""
        key = self.ring.signing(self._clock())
        ref = token_mod.reference(message_id=message_id, recipient=recipient, tenant=tenant,
                                  campaign=campaign)
        local = token_mod.encode(key_id=key.id, secret=key.secret, ref=ref,
                                 bounce_domain=bounce_domain)
        record = ReturnPathRecord(reference=ref, message_id=message_id, recipient=recipient,
                                  tenant=tenant, campaign=campaign)
        return f"{local}@{bounce_domain}", record
