"""The mailto variant of List-Unsubscribe (RFC 2369): the token in the Subject of the
mail a recipient's client sends to `<mailto:ADDRESS?subject=unsubscribe-<token>>`.

Clients send that subject as it is; some people reply to, rather than send, such a
mail, and some clients encode the subject (RFC 2047) or fold it. So the subject is
decoded, its whitespace collapsed, and reply prefixes ("Re:", "RE[2]:", "AW:",
"SV:"...) taken off; what is left must be `unsubscribe-<token>` and nothing else,
the word in any case (the token is base64url: its case is its value). Anything
else in the subject is not a request: a person writing to the address, an
auto-reply titled "Automatic reply: ...", a notice about another mail.
"""

from __future__ import annotations

import re

from quiver.feedback.encoded_words import decode_words
from quiver.unsubscribe.token import MAX_TOKEN_CHARS

PREFIX = "unsubscribe-"
# Reply prefixes as the common clients write them: English, German (AW), Nordic
# (SV, VS), Dutch (Antw), Polish (Odp), Italian (R, Rif), with an optional count.
_REPLY = re.compile(r"(?:re|aw|sv|vs|antw|odp|rif|r) ?(?:\[\d{1,4}\] ?)?: ?", re.IGNORECASE)
# More prefixes than this is not a reply thread but a subject built to cost work.
MAX_REPLY_PREFIXES = 16
_REQUEST = re.compile(rf"(?i:unsubscribe)-([A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}})")


def token_from_subject(subject: str | None) -> str | None:
    """The token a request's Subject carries, or None when it is not
    `unsubscribe-<token>` (after decoding and reply prefixes). The token is not
    checked here: quiver.unsubscribe.verify does that."""
    if not subject:
        return None
    text = " ".join(decode_words(subject).split())
    for _ in range(MAX_REPLY_PREFIXES):
        prefix = _REPLY.match(text)
        if prefix is None:
            break
        text = text[prefix.end():]
    found = _REQUEST.fullmatch(text)
    return found.group(1) if found else None
