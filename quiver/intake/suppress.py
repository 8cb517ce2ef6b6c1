"""The suppression entries the intakes write (quiver.storage.base.Suppression).

Scope is the message's tenant, or every tenant for a message without one (the only
scope such a message is checked against), as the sender's synchronous hard
bounces. The entry's values come from the inbound object alone (its time, the
event it records), so writing it again on a retry changes nothing.
"""

from __future__ import annotations

from quiver.addresses import AddressError
from quiver.events import rfc3339_ms
from quiver.returnpath import Verified
from quiver.storage.base import ALL_TENANTS, Suppression, SuppressionReason
from quiver.suppression.address import suppression_address
from quiver.suppression.writer import MAX_SOURCE


def entry(verified: Verified, *, reason: SuppressionReason, at: float, event: str,
          detail: str = "") -> Suppression:
    """The entry for the token's recipient; its source names the event that put it
    there ("async_bounce <id> at <time>: <detail>", as the sender's "bounced ...")."""
    try:
        address = suppression_address(verified.recipient)
    except AddressError:
        # The sender stored it from an accepted envelope; lower-cased as the stores do.
        address = verified.recipient.lower()
    source = f"{event} {verified.message_id} at {rfc3339_ms(at)}"
    if detail:
        source += f": {detail}"
    return Suppression(
        address=address, reason=reason, created_at=at,
        tenant=verified.tenant if verified.tenant is not None else ALL_TENANTS,
        source=source[:MAX_SOURCE],
    )
