"""A bounded MIME reader for inbound reports: header blocks, multipart splitting, decoding.

The standard library's parser builds every part of every nested message, so its
cost is set by the sender of the mail. This reader walks only containers
(multipart/*), stops counting at the bounds in `limits`, never descends into an
attached message (its header block is read on request), and decodes text with
a charset it can use or else UTF-8 with replacement: no input makes it raise
anything but `TooComplex` or `Malformed`.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass

from quiver.feedback.limits import (
    MAX_DEPTH,
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_PARTS,
    MAX_VALUE_CHARS,
)

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(r"\r?\n")
_PARAM = re.compile(r';\s*([^=\s;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_BASE64_NOISE = re.compile(rb"[^A-Za-z0-9+/]")
# RFC 2046 5.1.1: a boundary is 1-70 characters of this set (space not last).
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")

Fields = tuple[tuple[str, str], ...]


class TooComplex(Exception):
    """Past one of the bounds in `limits`."""


class Malformed(Exception):
    """Not readable as the structure it declares."""


@dataclass(frozen=True, slots=True)
class Part:
    fields: Fields
    content_type: str  # lower case type/subtype; text/plain when absent (RFC 2045 5.2)
    params: dict[str, str]
    # Still transfer-encoded; `decoded_body` undoes Content-Transfer-Encoding.
    body: bytes
    children: tuple[Part, ...] = ()

    def field(self, name: str) -> str | None:
        return first(self.fields, name)

    def decoded_body(self) -> bytes:
        return decode_transfer(self.body, self.field("content-transfer-encoding"))


@dataclass
class _Budget:
    """Parts counted across the whole walk, so siblings share one bound."""

    parts: int = 0


def first(fields: Fields, name: str) -> str | None:
    name = name.lower()
    for key, value in fields:
        if key.lower() == name:
            return value
    return None


def every(fields: Fields, name: str) -> tuple[str, ...]:
    name = name.lower()
    return tuple(value for key, value in fields if key.lower() == name)


def split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header block, body). A block with no blank line after it is all header."""
    if data.startswith((b"\r\n", b"\n")):
        return b"", data[2 if data.startswith(b"\r\n") else 1:]
    found = _BLANK_LINE.search(data, 0, MAX_HEADER_BYTES + 4)
    if found is None:
        if len(data) > MAX_HEADER_BYTES:
            raise TooComplex(f"a header block over {MAX_HEADER_BYTES} bytes")
        return data, b""
    return data[: found.start()], data[found.end():]


def parse_fields(block: bytes, *, skip_blank: bool = False) -> Fields:
    """Unfolded (name, value) pairs. Lines that are not fields (no colon, an mbox
    "From " line) are skipped; with skip_blank, blank lines inside are too."""
    if len(block) > MAX_HEADER_BYTES:
        raise TooComplex(f"a header block over {MAX_HEADER_BYTES} bytes")
    text = block.decode("utf-8", "replace")
    fields: list[_Field] = []
    for line in _LINE.split(text):
        if not line.strip():
            if skip_blank:
                continue
            break
        if line[0] in " \t":
            if fields:
                fields[-1].add(line.strip())
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or " " in name:
            continue
        if len(fields) == MAX_HEADER_FIELDS:
            raise TooComplex(f"more than {MAX_HEADER_FIELDS} header fields in one block")
        fields.append(_Field(name, value.strip()))
    return tuple((f.name, f.value()) for f in fields)


class _Field:
    """A field being unfolded: its pieces are joined once, and stop growing at
    MAX_VALUE_CHARS, however many lines it is folded over."""

    __slots__ = ("name", "pieces", "size")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.pieces = [value]
        self.size = len(value)

    def add(self, piece: str) -> None:
        if self.size < MAX_VALUE_CHARS:
            self.pieces.append(piece)
            self.size += len(piece) + 1

    def value(self) -> str:
        return " ".join(self.pieces)[:MAX_VALUE_CHARS].strip()


def content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """(type/subtype lower case, parameters with lower-case names, unquoted)."""
    if not value:
        return "text/plain", {}
    main, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(value):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name.lower(), raw)
    main = main.strip().lower()
    return (main if "/" in main else "text/plain"), params


def read_part(data: bytes, *, depth: int = 0, budget: _Budget | None = None) -> Part:
    """One entity (a whole message, or a part of one) with its containers walked."""
    budget = budget if budget is not None else _Budget()
    if depth > MAX_DEPTH:
        raise TooComplex(f"containers nested deeper than {MAX_DEPTH}")
    head, body = split_head(data)
    fields = parse_fields(head)
    ctype, params = content_type(first(fields, "content-type"))
    if not ctype.startswith("multipart/"):
        return Part(fields, ctype, params, body)
    boundary = params.get("boundary", "")
    if not _BOUNDARY.match(boundary):
        raise Malformed(f"{ctype} without a usable boundary parameter")
    children = tuple(
        read_part(chunk, depth=depth + 1, budget=budget)
        for chunk in split_multipart(body, boundary, budget=budget)
    )
    return Part(fields, ctype, params, b"", children)


def split_multipart(body: bytes, boundary: str, *, budget: _Budget) -> list[bytes]:
    """The parts between boundary delimiters (RFC 2046 5.1.1), preamble and
    epilogue dropped. A missing close delimiter ends the last part at the end."""
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("ascii")) + rb"(--)?[ \t]*(?=\r?\n|\Z)"
    )
    chunks: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(_after_line_end(body[start: match.start()]))
        if match.group(1):
            start = None
            break
        budget.parts += 1
        if budget.parts > MAX_PARTS:
            raise TooComplex(f"more than {MAX_PARTS} MIME parts")
        start = match.end()
    if start is not None:
        chunks.append(_after_line_end(body[start:]))
    if not chunks:
        raise Malformed("a multipart body with no part under its boundary")
    return chunks


def _after_line_end(chunk: bytes) -> bytes:
    # The delimiter line's own CRLF still opens the chunk.
    if chunk.startswith(b"\r\n"):
        return chunk[2:]
    return chunk[1:] if chunk.startswith(b"\n") else chunk


def decode_transfer(body: bytes, encoding: str | None) -> bytes:
    """Undo base64 or quoted-printable; anything else (7bit, 8bit, binary, unknown)
    is already the content."""
    kind = (encoding or "").strip().lower()
    if kind == "base64":
        # Padding is dropped with the noise and put back: senders break lines
        # anywhere and pad wrongly, and a quantum of one character carries no byte.
        cleaned = _BASE64_NOISE.sub(b"", body)
        cleaned = cleaned[: len(cleaned) - (1 if len(cleaned) % 4 == 1 else 0)]
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error as exc:
            raise Malformed(f"base64 that does not decode: {exc}") from None
    if kind == "quoted-printable":
        return binascii.a2b_qp(body)
    return body


def decode_text(data: bytes, charset: str | None) -> str:
    """Text in its declared charset when Python has a text codec by that name,
    else UTF-8; undecodable bytes become U+FFFD either way."""
    name = (charset or "utf-8").strip().strip('"') or "utf-8"
    try:
        if not codecs.lookup(name)._is_text_encoding:
            name = "utf-8"
        return data.decode(name, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        # Unknown names, and codecs (idna, punycode, ...) that refuse "replace".
        return data.decode("utf-8", "replace")
