"""The List-Unsubscribe and List-Unsubscribe-Post header fields (RFC 2369, RFC 8058)
that the sender adds to a message before DKIM signing."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from quiver.message import header_block
from quiver.policy.unsubscribe import UnsubscribeRule
from quiver.returnpath.keys import KeyRing
from quiver.unsubscribe import token as token_mod
from quiver.unsubscribe.token import Subject

POST_VALUE = b"List-Unsubscribe=One-Click"
# RFC 5322 2.1.1: a line MUST be at most 998 octets; a longer token is not sent.
MAX_LINE = 998
# Either field at the start of a header line, any case (RFC 5322 names are
# case-insensitive); whitespace before the colon is obsolete syntax, still read.
_PRESENT = re.compile(rb"^list-unsubscribe(?:-post)?[ \t]*:", re.IGNORECASE | re.MULTILINE)


def has_unsubscribe(message: bytes) -> bool:
    """Whether the message's header section has List-Unsubscribe or -Post already."""
    return _PRESENT.search(header_block(message)) is not None


class UnsubscribeHeaders:
    """Makes the two header fields for one recipient, signed with the ring's signing key.
    The ring can be replaced while the sender runs (`ring`), like ReturnPaths'."""

    def __init__(self, ring: KeyRing, *, clock: Callable[[], float] = time.time) -> None:
        self.ring = ring
        self._clock = clock

    def token(self, subject: Subject) -> str:
        key = self.ring.signing(self._clock())
        return token_mod.encode(key_id=key.id, secret=key.secret, subject=subject)

    def fields(self, rule: UnsubscribeRule, subject: Subject) -> bytes:
        """Both header fields, CRLF-terminated, to put at the top of the header
        section; TokenError if the subject does not fit a token."""
        token = self.token(subject)
        value = f"<{rule.url}{token}>"
        if rule.mailto is not None:
            # Folded after the comma (RFC 2369 allows FWS there): each URI on its own
            # line keeps lines short for a typical token.
            value += f",\r\n <mailto:{rule.mailto}?subject=unsubscribe-{token}>"
        field = b"List-Unsubscribe: " + value.encode("ascii")
        if any(len(line) > MAX_LINE for line in field.split(b"\r\n")):
            raise token_mod.TokenError(f"List-Unsubscribe would have a line over {MAX_LINE} "
                                       "octets (a long recipient, id or URL)")
        return field + b"\r\nList-Unsubscribe-Post: " + POST_VALUE + b"\r\n"
