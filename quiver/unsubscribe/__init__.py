"""One-click unsubscribe (RFC 8058): the tokens in List-Unsubscribe URLs, the header
fields the sender adds (quiver.unsubscribe.headers, imported from there: it reads
policy, which the endpoint's Lambda does not carry), and the endpoint's work
(service.py: GET shows a confirmation page, POST suppresses and records an
`unsubscribed` event; apply.py: what an unsubscribe writes, shared with the intake
of mail to the mailto address, quiver.intake.unsubscribe).

Tokens are signed with the return-path key ring (quiver.returnpath.keys), under
their own MAC context: one set of keys to rotate, two kinds of token that never
stand for each other.
"""

from quiver.unsubscribe.apply import unsubscribed_event
from quiver.unsubscribe.service import Response, Unsubscriber, one_click
from quiver.unsubscribe.token import Subject, TokenError
from quiver.unsubscribe.verify import (
    REFUSAL_REASONS,
    Refusal,
    RefusalReason,
    UnsubscribeVerifier,
    Verified,
)

__all__ = [
    "REFUSAL_REASONS", "Refusal", "RefusalReason", "Response", "Subject", "TokenError",
    "UnsubscribeVerifier", "Unsubscriber", "Verified", "one_click", "unsubscribed_event",
]
