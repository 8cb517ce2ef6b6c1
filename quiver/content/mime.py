"""MIME structure (RFC 2045, RFC 2046) as offsets into a CRLF-only message.

An entity is its header and its body; a multipart's body is parts separated by
delimiter lines (with a preamble before the first and an epilogue after the
last), a message/rfc822's body is one entity. Everything else is a leaf whose
body is its content under its Content-Transfer-Encoding. Nothing is copied:
re-encoding (`quiver.content.reencode`) reads the offsets and writes out only
what it changes, so boundaries, delimiters and untouched parts stay byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from quiver.content.errors import ContentError
from quiver.content.header import Header, parse_header
from quiver.content.lines import CRLF

# Deeper nesting than any mail client writes; a bound keeps hostile input from
# exhausting the stack.
MAX_DEPTH = 32
# Encodings that leave the bytes as they are (RFC 2045 6.2).
IDENTITY = frozenset({"7bit", "8bit", "binary"})
KNOWN = IDENTITY | {"quoted-printable", "base64"}
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*/[ \t]*(" + _TOKEN + rb")")
_BOUNDARY = re.compile(
    rb';[ \t]*boundary[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.){1,70})"|([^ \t;"]{1,70}))', re.IGNORECASE)
_QUOTED_PAIR = re.compile(rb"\\(.)")
_CTE = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*(?:\(.*)?$")


@dataclass(frozen=True, slots=True)
class Entity:
    start: int
    header: Header
    end: int
    ctype: str  # "type/subtype", lower-case
    cte: str  # lower-case; "7bit" when the field is absent
    parts: tuple[Entity, ...] = ()  # a multipart's parts, in order
    inner: Entity | None = None  # a message/rfc822's message
    multipart: bool = False

    @property
    def body(self) -> int:
        return self.header.body

    def gaps(self) -> Iterator[tuple[int, int]]:
        """A multipart's bytes outside its parts: preamble, delimiters, epilogue."""
        pos = self.body
        for part in self.parts:
            yield pos, part.start
            pos = part.end
        yield pos, self.end

    def walk(self) -> Iterator[Entity]:
        yield self
        for part in self.parts:
            yield from part.walk()
        if self.inner is not None:
            yield from self.inner.walk()


def parse(message: bytes) -> Entity:
    """The MIME structure of a CRLF-only message."""
    return _entity(message, 0, len(message), default="text/plain", depth=0)


def _entity(buf: bytes, start: int, end: int, *, default: str, depth: int) -> Entity:
    if depth > MAX_DEPTH:
        raise ContentError(f"MIME parts nested more than {MAX_DEPTH} levels deep")
    header = parse_header(buf, start, end)
    ctype, boundary = default, None
    cte = "7bit"
    # The first of each field counts, as readers take it.
    fields = {f.name: f.value for f in reversed(header.fields)}
    if (value := fields.get(b"content-type")) is not None and (found := _TYPE.match(value)):
        ctype = (found.group(1) + b"/" + found.group(2)).decode("ascii").lower()
        if (b := _BOUNDARY.search(value)) is not None:
            boundary = b.group(2) or _QUOTED_PAIR.sub(rb"\1", b.group(1))
    if (value := fields.get(b"content-transfer-encoding")) is not None:
        # A token, then perhaps a comment: "8bit (as sent)".
        found = _CTE.match(value)
        cte = found.group(1).decode("ascii").lower() if found else value.decode(
            "ascii", "replace").strip()
    if cte in IDENTITY and ctype.startswith("multipart/") and boundary:
        # RFC 2046 5.1.5: a digest's parts are messages unless they say otherwise.
        child = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        parts = tuple(_entity(buf, s, e, default=child, depth=depth + 1)
                      for s, e in _part_spans(buf, header.body, end, boundary))
        return Entity(start, header, end, ctype, cte, parts=parts, multipart=True)
    if cte in IDENTITY and ctype == "message/rfc822" and header.body < end:
        inner = _entity(buf, header.body, end, default="text/plain", depth=depth + 1)
        return Entity(start, header, end, ctype, cte, inner=inner)
    return Entity(start, header, end, ctype, cte)


def _part_spans(buf: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each part of a multipart body buf[start:end] (RFC 2046 5.1.1).

    The CRLF before a delimiter line belongs to the delimiter, not to the part.
    Without a close delimiter the last part runs to the end.
    """
    delimiter = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part: int | None = None
    pos = start
    while (found := _delimiter(buf, pos, end, delimiter, first=pos == start)) is not None:
        line, after, closing = found
        if part is not None:
            spans.append((part, max(part, line - 2)))
        if closing:
            return spans
        part = after
        # The CRLF that ends this delimiter line may also begin the next one.
        pos = after - 2 if buf.startswith(CRLF, after - 2, after) else after
    if part is not None:
        spans.append((part, end))
    return spans


def _delimiter(buf: bytes, pos: int, end: int, delimiter: bytes, *, first: bool
               ) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after `pos`: (its start, the offset past its
    CRLF, whether it closes the multipart). Only transport padding (SP, HTAB) may
    follow the boundary (and its closing '--') on the line."""
    if first and buf.startswith(delimiter, pos, end):
        candidate = pos
    else:
        found = buf.find(CRLF + delimiter, pos, end)
        if found < 0:
            return None
        candidate = found + 2
    while True:
        eol = buf.find(CRLF, candidate, end)
        line_end = end if eol < 0 else eol
        rest = buf[candidate + len(delimiter):line_end]
        closing = rest.startswith(b"--")
        if not (rest[2:] if closing else rest).strip(b" \t"):
            return candidate, (end if eol < 0 else eol + 2), closing
        found = buf.find(CRLF + delimiter, line_end, end)
        if found < 0:
            return None
        candidate = found + 2
