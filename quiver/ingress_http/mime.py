"""A small MIME builder for composed messages: subject, text and/or html, headers.

email.message with email.policy.SMTP: CRLF line endings, RFC 2047 for non-ASCII
header text, and a transfer encoding chosen per part (7bit, quoted-printable or
base64, whichever the content needs), so the result passes the content rules the
sender applies (line lengths, 8-bit data) without re-encoding.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

# What the standard library's header parser raises on malformed values: besides its
# own errors, some hostile address lists make it fail inside itself (a TypeError or
# AttributeError from its parse tree, as of Python 3.11-3.13); each is the caller's
# header, refused as such, never a failed batch.
_HEADER_ERRORS = (HeaderParseError, ValueError, IndexError, TypeError, AttributeError)

# Headers the builder writes from the message's structure: a caller's copy would
# contradict it. From, To, Date and Message-ID may be given; they replace the defaults.
RESERVED = frozenset({"mime-version", "content-type", "content-transfer-encoding",
                      "subject"})


class MimeError(ValueError):
    """A composed message that cannot be rendered: `field` says which part."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(reason)


def build(*, sender: str, to: Sequence[str], subject: str, text: str | None,
          html: str | None, headers: Mapping[str, str], now: float | None = None) -> bytes:
    """The rendered message, CRLF line endings."""
    message = EmailMessage(policy=SMTP)
    given = {name.lower(): (name, value) for name, value in headers.items()}
    for lower, (name, _) in given.items():
        if lower in RESERVED:
            raise MimeError(f"headers.{name}", f"{name} is written by the builder "
                            "(use the subject field; the body decides the rest)")
    try:
        message["From"] = given.pop("from", ("From", sender))[1]
        message["To"] = given.pop("to", ("To", ", ".join(to)))[1]
        message["Subject"] = subject
        message["Date"] = given.pop("date", ("Date", formatdate(
            time.time() if now is None else now, usegmt=True)))[1]
        domain = sender.rpartition("@")[2] or None
        message["Message-ID"] = given.pop("message-id", ("Message-ID",
                                                         make_msgid(domain=domain)))[1]
    except _HEADER_ERRORS as exc:
        raise MimeError("headers", f"unusable header: {exc}") from None
    for name, value in given.values():
        try:
            message[name] = value
        except _HEADER_ERRORS as exc:
            raise MimeError(f"headers.{name}", f"unusable header: {exc}") from None
    if text is not None:
        message.set_content(text, subtype="plain", charset="utf-8")
        if html is not None:
            message.add_alternative(html, subtype="html", charset="utf-8")
    elif html is not None:
        message.set_content(html, subtype="html", charset="utf-8")
    try:
        return message.as_bytes(policy=SMTP)
    except (*_HEADER_ERRORS, UnicodeError) as exc:
        raise MimeError("headers", f"cannot render the message: {exc}") from None
