"""What every message must be before it is accepted or sent, and the cheap path to it.

`prepare` is run by the client before a message is enqueued and by the sender
before it signs: same rules, same words. A message that is already CRLF-only
7-bit text with short lines (nearly all mail) costs a handful of whole-buffer
scans and a look at each header line; only a message with a long line or an
8-bit byte is parsed as MIME.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quiver.content.errors import ContentError
from quiver.content.header import check_header
from quiver.content.lines import MAX_LINE, first_long_line, has_long_line, line_number
from quiver.content.mime import parse
from quiver.content.reencode import check_convertible, reencode
from quiver.message import WireReady, to_crlf

# The biggest providers refuse mail above 35-50 MB, and the sender holds each
# message in memory while it is delivered.
DEFAULT_MAX_MESSAGE_SIZE = 40 * 1024 * 1024
LongLines = Literal["reencode", "refuse"]


@dataclass(frozen=True, slots=True)
class Ready:
    """A message as it may travel: CRLF line ends, no line over 998 octets."""

    message: bytes
    # 8-bit bytes in a part's body: sent with BODY=8BITMIME, or in a 7-bit form
    # (`seven_bit`) to a server that does not offer it.
    eight_bit: bool


def check_size(size: int, *, max_size: int) -> None:
    """Raise ContentError if a message of `size` bytes is over the limit."""
    if size > max_size:
        raise ContentError(
            f"message is {size:,} bytes, over the limit of {max_size:,} (max_message_size)")


def prepare(raw: bytes, *, max_size: int, long_lines: LongLines) -> Ready:
    """Check `raw` and make it ready to sign and send; raises ContentError saying why not.

    Refused: over `max_size`, empty, a NUL byte, a header section that is not
    one (see `check_header`), a line over 998 octets when `long_lines` is
    "refuse" (else the part is re-encoded, a header line folded), and 8-bit data
    that could not be written in 7 bits for a server without 8BITMIME.
    """
    check_size(len(raw), max_size=max_size)
    if not raw:
        raise ContentError("empty message")
    message = to_crlf(raw)
    if (nul := message.find(b"\0")) >= 0:
        raise ContentError("NUL byte (binary content goes base64-encoded in a MIME part)",
                           line=line_number(message, nul))
    check_header(message)
    long = has_long_line(message)
    eight = not message.isascii()
    if long and long_lines == "refuse":
        offset, length = first_long_line(message) or (0, 0)
        raise ContentError(
            f"{length} octets long; lines may be at most {MAX_LINE} (RFC 5322 2.1.1) and "
            "content.long_lines is 'refuse'", line=line_number(message, offset))
    if eight:
        check_convertible(message, parse(message))
    if not long:
        # Checked whole: CRLF-only, no NUL, no long line. Signing and SMTP take it as is.
        return Ready(WireReady(message), eight_bit=eight)
    message = reencode(message, seven_bit=False)
    return Ready(message, eight_bit=eight and not message.isascii())


def seven_bit(message: bytes) -> bytes:
    """A `Ready.message` with 8-bit data written in 7 bits, for a server without
    8BITMIME (RFC 6152): each 8-bit part as quoted-printable (text) or base64."""
    return reencode(message, seven_bit=True)
