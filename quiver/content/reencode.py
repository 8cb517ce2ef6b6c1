"""Rewrite a message so that it can travel: no line over 998 octets, and (for a server
without 8BITMIME) no 8-bit byte.

Only what needs it changes. A leaf part with a long line (or, for 7 bits, an 8-bit
byte) is written again: base64 stays base64 (re-wrapped), quoted-printable is
re-encoded, anything else becomes quoted-printable if it is text and base64
otherwise, and its Content-Transfer-Encoding field says so. A header line over
998 octets is folded at whitespace. A multipart or message/rfc822 labelled 8bit
or binary is relabelled 7bit once its content is. Every other byte, boundaries
and delimiters included, is copied as it was.
"""

from __future__ import annotations

import binascii

from quiver.content.errors import ContentError
from quiver.content.header import eight_bit_header, fold
from quiver.content.lines import (
    CRLF,
    MAX_LINE,
    first_eight_bit,
    first_long_line,
    has_long_line,
    line_number,
)
from quiver.content.mime import IDENTITY, KNOWN, Entity, parse
from quiver.content.transfer import base64_lines, encode_base64, encode_qp

_CTE = b"content-transfer-encoding"
_MIME_VERSION = b"MIME-Version: 1.0\r\n"


def reencode(message: bytes, *, seven_bit: bool) -> bytes:
    """`message` (CRLF-only, its header section checked) with no line over 998 octets
    and, if `seven_bit`, no 8-bit byte. Raises ContentError naming the line of
    what cannot be rewritten."""
    root = parse(message)
    if seven_bit:
        check_convertible(message, root)
    out = _render(message, root, seven_bit=seven_bit, message_level=True)
    return message if out is None else b"".join(out)


def check_convertible(buf: bytes, root: Entity) -> None:
    """Raise ContentError unless every 8-bit byte of the message is in a leaf part's
    body under a known encoding, the only places a 7-bit form can be written for."""
    for entity in root.walk():
        if (at := first_eight_bit(buf, entity.start, entity.header.end)) is not None:
            raise eight_bit_header(buf, at)
        if entity.multipart:
            for start, end in entity.gaps():
                if (at := first_eight_bit(buf, start, end)) is not None:
                    raise ContentError(
                        "8-bit data in a multipart's preamble or epilogue cannot be "
                        "converted for servers without 8BITMIME", line=line_number(buf, at))
        elif entity.inner is None and entity.cte not in KNOWN and (
                at := first_eight_bit(buf, entity.body, entity.end)) is not None:
            raise _unknown_encoding(buf, entity, "8-bit data", at)


def _render(buf: bytes, entity: Entity, *, seven_bit: bool, message_level: bool
            ) -> list[bytes] | None:
    """The entity written again, in pieces; None when it stays as it is."""
    header_long = has_long_line(buf, entity.start, entity.header.end)
    relabel = seven_bit and entity.cte in ("8bit", "binary")
    if entity.multipart or entity.inner is not None:
        children = [*entity.parts, *([entity.inner] if entity.inner is not None else [])]
        rendered = [_render(buf, child, seven_bit=seven_bit,
                            message_level=entity.inner is not None) for child in children]
        if entity.multipart:
            for start, end in entity.gaps():
                if (long := first_long_line(buf, start, end)) is not None:
                    raise ContentError(
                        f"a line of {long[1]} octets (at most {MAX_LINE}) in a multipart's "
                        "preamble or epilogue cannot be re-encoded",
                        line=line_number(buf, long[0]))
        if not header_long and not relabel and all(r is None for r in rendered):
            return None
        out = [_header(buf, entity, cte=b"7bit" if relabel else None, mime_version=False),
               buf[entity.header.end:entity.body]]
        pos = entity.body
        for child, piece in zip(children, rendered, strict=True):
            out.append(buf[pos:child.start])
            out.extend(piece if piece is not None else [buf[child.start:child.end]])
            pos = child.end
        out.append(buf[pos:entity.end])
        return out
    body_long = has_long_line(buf, entity.body, entity.end)
    eight = seven_bit and not buf[entity.body:entity.end].isascii()
    if not body_long and not eight:
        if not header_long:
            return None
        return [_header(buf, entity, cte=None, mime_version=False),
                buf[entity.header.end:entity.end]]
    if entity.cte not in KNOWN:
        if body_long:
            at, length = first_long_line(buf, entity.body, entity.end) or (entity.body, 0)
            raise _unknown_encoding(buf, entity, f"a line of {length} octets", at)
        raise _unknown_encoding(buf, entity, "8-bit data", entity.body)
    cte, data = _encoded(buf[entity.body:entity.end], entity)
    if buf.endswith(CRLF, entity.body, entity.end) and not data.endswith(CRLF):
        data += CRLF  # the body ended its last line; so does its new form
    return [_header(buf, entity, cte=cte, mime_version=message_level), CRLF, data]


def _encoded(body: bytes, entity: Entity) -> tuple[bytes, bytes]:
    if entity.cte == "base64":
        return b"base64", base64_lines(body)
    if entity.cte == "quoted-printable":
        return b"quoted-printable", encode_qp(binascii.a2b_qp(body))
    assert entity.cte in IDENTITY
    if entity.ctype.startswith("text/"):
        return b"quoted-printable", encode_qp(body)
    return b"base64", encode_base64(body)


def _header(buf: bytes, entity: Entity, *, cte: bytes | None, mime_version: bool) -> bytes:
    """The entity's header fields with long lines folded and, if `cte` is given, one
    Content-Transfer-Encoding field saying it (replacing the first, dropping others);
    MIME-Version added if `mime_version` and the header has none (RFC 2045 4)."""
    out: list[bytes] = []
    written = False
    for field in entity.header.fields:
        text = buf[field.start:field.end]
        if cte is not None and field.name == _CTE:
            if not written:
                out.append(text[:len(_CTE)] + b": " + cte + CRLF)
                written = True
            continue
        if has_long_line(text):
            number = line_number(buf, field.start)
            text = CRLF.join(
                fold(line, number=number + i) if len(line) > MAX_LINE else line
                for i, line in enumerate(text.split(CRLF)))
        out.append(text)
    extra = []
    if cte is not None and not written:
        extra.append(b"Content-Transfer-Encoding: " + cte + CRLF)
    if mime_version and not any(f.name == b"mime-version" for f in entity.header.fields):
        extra.append(_MIME_VERSION)
    if extra and out and not out[-1].endswith(CRLF):
        out[-1] += CRLF  # the last field ended the entity without a line end
    return b"".join(out + extra)


def _unknown_encoding(buf: bytes, entity: Entity, what: str, at: int) -> ContentError:
    return ContentError(
        f"{what} in a part whose Content-Transfer-Encoding is {entity.cte!r}: it cannot be "
        "re-encoded (use base64 or quoted-printable)", line=line_number(buf, at))
