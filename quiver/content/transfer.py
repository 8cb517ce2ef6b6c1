"""Content-Transfer-Encodings (RFC 2045 6.7, 6.8): a part's content written as
quoted-printable or base64 in lines of at most 76 characters with CRLF ends."""

from __future__ import annotations

import binascii
import re

from quiver.content.lines import CRLF
from quiver.message import to_crlf

# RFC 2045 6.7 (5) and 6.8: encoded lines are at most 76 characters.
ENCODED_LINE = 76
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/=]")
# A quoted-printable line as binascii writes it: escapes and single characters.
_QP_TOKEN = re.compile(rb"=[0-9A-F]{2}|[^=]", re.DOTALL)


def base64_lines(body: bytes) -> bytes:
    """Base64 text, as written or with characters outside the alphabet dropped (readers
    ignore them), wrapped at 76 characters; no CRLF after the last line."""
    text = _BASE64_NOISE.sub(b"", body)
    return CRLF.join(text[i:i + ENCODED_LINE] for i in range(0, len(text), ENCODED_LINE))


def encode_base64(content: bytes) -> bytes:
    """`content` in base64 lines; no CRLF after the last line."""
    return base64_lines(binascii.b2a_base64(content, newline=False))


def encode_qp(content: bytes) -> bytes:
    """`content` in quoted-printable. Its CRLFs stay line breaks when it is text with CRLF
    line ends only; otherwise every CR and LF is escaped, so decoding gives back exactly
    `content`. No line begins with "--", which a multipart could take for a delimiter."""
    text = to_crlf(content) == content
    encoded = to_crlf(binascii.b2a_qp(content, quotetabs=False, istext=text, header=False))
    if not encoded.startswith(b"--") and b"\n--" not in encoded:
        return encoded
    return CRLF.join(
        _unhyphenated(line) if line.startswith(b"--") else line
        for line in encoded.split(CRLF))


def _unhyphenated(line: bytes) -> bytes:
    """A quoted-printable line that starts with "--", written again so that no line of it
    does: a leading '-' escaped (=2D), the line soft-broken where that makes it too long."""
    soft = line.endswith(b"=")
    tokens = _QP_TOKEN.findall(line[:-1] if soft else line)
    lines: list[bytes] = []
    current: list[bytes] = []
    width = 0
    for token in tokens:
        if width + len(token) > ENCODED_LINE - 3:  # room for "=2D" to grow it and a soft "="
            lines.append(b"".join(current) + b"=")
            current, width = [], 0
        if not current and token == b"-":
            token = b"=2D"
        current.append(token)
        width += len(token)
    lines.append(b"".join(current) + (b"=" if soft else b""))
    return CRLF.join(lines)
