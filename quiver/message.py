"""Reading a rendered message cheaply: its line ends, and just the header the sender needs.

Full email parsing costs ~0.7 ms a message with policy.SMTP; the sender needs
only the From domain (to pick the DKIM key), so it scans the header block.

Line ends: CRLF, a bare LF and a bare CR each end a line. The DKIM signer and
the SMTP wire client both read a message through `to_crlf`, so the bytes signed
are the bytes the receiver gets.

A message checked once (content.prepare) travels as `WireReady`: the signer and
the SMTP client take it as it is instead of scanning it again, three whole-buffer
passes each.
"""

from __future__ import annotations

import re

# A field's value after its name: the rest of its line and its continuation lines.
_VALUE = re.compile(rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)")
_ANGLE = re.compile(rb"<([^<>]*)>")
_FOLD = re.compile(rb"\r?\n[ \t]+")
# RFC 5322 2.1.1 and RFC 5321 4.5.3.1.6: at most 998 octets before each CRLF.
MAX_LINE = 998
# An event carries at most this much of a Message-ID (RFC 5322 caps a line at 998).
MAX_MESSAGE_ID = MAX_LINE
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
CRLF = b"\r\n"


class WireReady(bytes):
    """Bytes known to be CRLF-only, without a NUL and without a line over 998 octets
    (RFC 5322 2.1.1), so fit for DATA as they are. Made where those checks were done
    (content.prepare, `prefixed`); what is built from one (a slice, a concatenation)
    is plain bytes again."""

    __slots__ = ()


def prefixed(head: bytes, message: bytes) -> bytes:
    """`head + message`; WireReady when `message` is and `head` (header fields of
    our own, a few hundred octets) checks out as whole CRLF-ended lines fit for DATA."""
    if (type(message) is not WireReady or not head.endswith(CRLF) or b"\0" in head
            or to_crlf(head) != head or max(map(len, head.split(CRLF))) > MAX_LINE):
        return head + message
    return WireReady(head + message)


def to_crlf(message: bytes) -> bytes:
    """`message` with every line end (CRLF, LF, lone CR) written as CRLF.

    A message that is already CRLF-only (what renderers send) is returned as is
    after a check in whole-buffer C passes, without a regex pass: it is CRLF-only
    exactly when dropping every CR and writing every LF as CRLF gives it back.
    (Two passes and a compare; `bytes.count` walks byte by byte, twice as slow.)
    WireReady bytes were checked when they were made: returned at once.
    """
    if type(message) is WireReady:
        return message
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


def _field(head: bytes, name: bytes) -> re.Match[bytes] | None:
    """The first field `name` (lower case) of the header section `head`, its value
    as group 1: a line that starts with the name in any case, then optional blanks
    and a colon.

    A regex with ^ in MULTILINE mode tries every octet of the section, and the
    DKIM-Signature field alone is 500 of them; here a lower-cased copy is searched
    at C speed for the name at a line's start (after LF, as MULTILINE's ^ reads
    it), and the regex runs only where the name is.
    """
    lower = head.lower()
    needle = b"\n" + name
    at = 0
    if not lower.startswith(name):
        at = lower.find(needle) + 1  # 0: not found
        if not at:
            return None
    while True:
        match = _VALUE.match(head, at + len(name))
        if match:
            return match
        at = lower.find(needle, at) + 1  # not this line ("From-Sender:"): the next
        if not at:
            return None


def from_domain(raw: bytes) -> str | None:
    """Domain of the (first) From header's address, lower-case, or None."""
    match = _field(header_block(raw), b"from")
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


def message_id(raw: bytes) -> str | None:
    """The (first) Message-ID header's value, unfolded and trimmed, or None."""
    match = _field(header_block(raw), b"message-id")
    if not match:
        return None
    value = _FOLD.sub(b" ", match.group(1)).strip()
    return value[:MAX_MESSAGE_ID].decode("utf-8", "replace") or None
