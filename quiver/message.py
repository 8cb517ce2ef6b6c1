"""Reading a rendered message cheaply: its line ends, and just the header the sender needs.

Full email parsing costs ~0.7 ms a message with policy.SMTP; the sender needs
only the From domain (to pick the DKIM key), so it scans the header block.

Line ends: CRLF, a bare LF and a bare CR each end a line. The DKIM signer and
the SMTP wire client both read a message through `to_crlf`, so the bytes signed
are the bytes the receiver gets.
"""

from __future__ import annotations

import re

_FROM = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_ANGLE = re.compile(rb"<([^<>]*)>")
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
CRLF = b"\r\n"


def to_crlf(message: bytes) -> bytes:
    """`message` with every line end (CRLF, LF, lone CR) written as CRLF.

    A message that is already CRLF-only (what renderers send) is returned as is
    after a check in whole-buffer C passes, without a regex pass: it is CRLF-only
    exactly when dropping every CR and writing every LF as CRLF gives it back.
    (Two passes and a compare; `bytes.count` walks byte by byte, twice as slow.)
    """
    if b"\r" not in message:  # memchr
        return message.replace(b"\n", CRLF)
    if message.translate(None, b"\r").replace(b"\n", CRLF) == message:
        return message
    return _LINE_END.sub(CRLF, message)


def header_block(raw: bytes) -> bytes:
    """The header section (up to the first empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end != -1:
            return raw[: end + len(sep) // 2]
    return raw


def from_domain(raw: bytes) -> str | None:
    """Domain of the (first) From header's address, lower-case, or None."""
    match = _FROM.search(header_block(raw))
    if not match:
        return None
    value = match.group(1)
    angle = _ANGLE.findall(value)
    address = angle[-1] if angle else value
    _, at, domain = address.strip().rpartition(b"@")
    if not at:
        return None
    text = domain.strip().rstrip(b">").decode("ascii", "replace").lower()
    return text or None
