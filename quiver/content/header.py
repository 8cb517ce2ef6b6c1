"""Header sections (RFC 5322 2.2): syntax, the fields of a MIME entity, folding.

`check_header` is the strict check of a whole message's header section, on the
sender's path for every message: it only splits and matches. `parse_header`
reads the header of a MIME part, leniently, the way mail readers do, for the
slower work of re-encoding parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quiver.content.errors import ContentError
from quiver.content.lines import CRLF, MAX_LINE, QUOTE, first_eight_bit, line_number

# A field starts with its name, printable ASCII other than ':', then ':' (RFC 5322
# 3.6.8). "Name :" (obsolete syntax) is refused: verifiers disagree on reading it.
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_WSP = b" \t"


@dataclass(frozen=True, slots=True)
class Field:
    name: bytes  # lower-case
    value: bytes  # after the colon, folding CRLFs removed
    start: int  # offset of its first line
    end: int  # offset just past its last line's CRLF


@dataclass(frozen=True, slots=True)
class Header:
    fields: tuple[Field, ...]
    end: int  # just past the last field (where an added field goes)
    body: int  # where the body starts: past the empty line, or the entity's end


def check_header(message: bytes) -> int:
    """Check the header section of a CRLF-only message; the offset of its body.

    The section must open the message, hold only fields and their continuation
    lines, end at an empty line (or at the end of a message with no body), have
    exactly one From field (RFC 5322 3.6) and no 8-bit byte (non-ASCII header
    text is written as RFC 2047 encoded-words; SMTPUTF8 is not supported).
    Raises ContentError naming the line.
    """
    if message.startswith(CRLF):
        raise ContentError("no header section: the message starts with an empty line", line=1)
    end = message.find(b"\r\n\r\n")
    head = message[:end] if end >= 0 else message.removesuffix(CRLF)
    froms = 0
    match = _FIELD_START.match
    for number, line in enumerate(head.split(CRLF), 1):
        found = match(line)
        if found is None:
            if number > 1 and line[:1] in (b" ", b"\t"):
                continue  # a folded field's continuation
            raise _bad_line(line, number)
        if found.end() == 5 and line[:4].lower() == b"from":
            froms += 1
    if froms != 1:
        raise ContentError(
            "no From header field (RFC 5322 3.6 requires one)" if froms == 0 else
            f"{froms} From header fields (RFC 5322 3.6 allows one)")
    if not head.isascii():
        offset = first_eight_bit(head)
        assert offset is not None
        raise eight_bit_header(message, offset)
    return len(message) if end < 0 else end + 4


def _bad_line(line: bytes, number: int) -> ContentError:
    if number == 1 and line[:1] in (b" ", b"\t"):
        return ContentError("the message starts with a continuation line, not a header field",
                            line=1)
    return ContentError(
        f"not a header field: {line[:QUOTE]!r} (a field is a name of printable ASCII "
        "other than ':' followed by ':'; an empty line must separate the header section "
        "from the body)", line=number)


def eight_bit_header(buf: bytes, offset: int) -> ContentError:
    return ContentError(
        f"non-ASCII byte 0x{buf[offset]:02x} in a header field: write non-ASCII header "
        "text as RFC 2047 encoded-words (SMTPUTF8 is not supported)",
        line=line_number(buf, offset))


def parse_header(buf: bytes, start: int, end: int) -> Header:
    """The header of the MIME entity buf[start:end] (CRLF-only), read leniently.

    It ends at the first empty line; a line that is neither a field nor a
    continuation also ends it and starts the body, as mail readers take it.
    """
    fields: list[Field] = []
    pos = start
    while pos < end:
        eol = buf.find(CRLF, pos, end)
        line_end = end if eol < 0 else eol
        after = end if eol < 0 else eol + 2
        if line_end == pos:
            return Header(tuple(fields), end=pos, body=after)
        if buf[pos] in _WSP and fields:
            last = fields[-1]
            fields[-1] = Field(last.name, last.value + buf[pos:line_end], last.start, after)
        else:
            found = _FIELD_START.match(buf, pos, line_end)
            if found is None:
                return Header(tuple(fields), end=pos, body=pos)
            fields.append(Field(buf[pos:found.end() - 1].lower(), buf[found.end():line_end],
                                pos, after))
        pos = after
    return Header(tuple(fields), end=pos, body=end)


def fold(line: bytes, *, number: int) -> bytes:
    """A header line longer than MAX_LINE octets, folded (RFC 5322 2.2.3) so that no
    line passes it: CRLF inserted before whitespace, which unfolding removes again.
    Raises ContentError when there is no whitespace to fold at."""
    pieces: list[bytes] = []
    rest = line
    while len(rest) > MAX_LINE:
        cut = max(rest.rfind(b" ", 1, MAX_LINE + 1), rest.rfind(b"\t", 1, MAX_LINE + 1))
        # The line before the fold must hold more than whitespace (RFC 5322 3.2.2).
        if cut <= 0 or not rest[:cut].strip(_WSP):
            raise ContentError(
                f"a header line of {len(line)} octets (at most {MAX_LINE}) has no whitespace "
                "to fold it at: shorten it", line=number)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return CRLF.join(pieces)
