"""Bounded MIME access for the bounce parser: pre-parse checks, a depth- and
width-limited walk, and text decoding that never raises on bad charsets or encodings."""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.feedparser import BytesFeedParser
from email.header import decode_header
from email.message import Message
from email.policy import Policy, compat32

from quiver.bounce.dsn_limits import (
    MAX_DECODED_TOTAL,
    MAX_INPUT_BYTES,
    MAX_LINES,
    MAX_MIME_PARTS,
    MAX_NESTING_DEPTH,
    MAX_PARSED_MESSAGES,
    MAX_PART_FIELDS,
    MAX_TEXT_PER_PART,
    MAX_TOP_HEADER_BYTES,
    MAX_TOP_HEADER_LINES,
)
from quiver.bounce.dsn_types import Ignored, IgnoreReason

_CONTENT_TYPE_LINE = re.compile(rb"(?im)^content-type[ \t]*:")
_FEED_CHUNK = 64 * 1024
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class TooComplex(Exception):
    """Raised while parsing or walking when a bound is crossed; parse_bounce turns it
    into Ignored(too_complex)."""


def precheck(raw: bytes) -> Ignored | None:
    """Refuse, before parsing, input whose size or shape alone is over a bound."""
    if len(raw) > MAX_INPUT_BYTES:
        return Ignored(IgnoreReason.TOO_LARGE,
                       f"{len(raw)} bytes, over the {MAX_INPUT_BYTES}-byte limit")
    if not raw.strip():
        return Ignored(IgnoreReason.MALFORMED, "empty message")
    end = _HEADER_END.search(raw, 0, MAX_TOP_HEADER_BYTES + 4)
    head_len = end.start() if end else len(raw)
    if head_len > MAX_TOP_HEADER_BYTES:
        return Ignored(IgnoreReason.TOO_COMPLEX,
                       f"header block over {MAX_TOP_HEADER_BYTES} bytes")
    if raw.count(b"\n", 0, head_len) + 1 > MAX_TOP_HEADER_LINES:
        return Ignored(IgnoreReason.TOO_COMPLEX,
                       f"header block over {MAX_TOP_HEADER_LINES} lines")
    # The parser ends a line at CR, LF or CRLF.
    lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    if lines > MAX_LINES:
        return Ignored(IgnoreReason.TOO_COMPLEX, f"{lines} lines, over the {MAX_LINES}-line limit")
    parts = len(_CONTENT_TYPE_LINE.findall(raw))
    if parts > MAX_MIME_PARTS:
        return Ignored(IgnoreReason.TOO_COMPLEX,
                       f"{parts} Content-Type fields, over the {MAX_MIME_PARTS}-part limit")
    return None


def parse_message(raw: bytes) -> Message:
    """Parse with the part count enforced while parsing: the email package creates one
    message object per part through the factory, which refuses the one over the limit.
    Counting Content-Type fields beforehand is not enough: parts without one (a
    multipart of bare delimiter lines) cost the parser as much, and 10 MB of them
    takes it minutes and hundreds of MB."""
    created = 0

    class _Counted(Message):
        def __init__(self, policy: Policy = compat32) -> None:
            nonlocal created
            created += 1
            # +1: the parser makes one probe instance when it is constructed.
            if created > MAX_PARSED_MESSAGES + 1:
                raise TooComplex(f"over {MAX_PARSED_MESSAGES} MIME parts and field blocks")
            super().__init__(policy)

    # compat32 keeps raw field values (no header objects built per field) and records
    # defects instead of raising.
    parser = BytesFeedParser(_factory=_Counted, policy=compat32)
    # Fed in chunks: the parser splits what it is fed into lines up front, so one
    # 10 MB feed would cost its memory before the first part could be refused.
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_CHUNK):
        parser.feed(bytes(view[start:start + _FEED_CHUNK]))
    return parser.close()


@dataclass(frozen=True, slots=True)
class Part:
    message: Message
    depth: int
    # Inside a returned message (message/rfc822): its texts are not the report's.
    in_original: bool


def walk(root: Message) -> list[Part]:
    """Every part, depth first, with bounds on depth, count and fields per part."""
    found: list[Part] = []
    stack: list[Part] = [Part(root, 0, False)]
    while stack:
        part = stack.pop()
        if part.depth > MAX_NESTING_DEPTH:
            raise TooComplex(f"MIME nesting deeper than {MAX_NESTING_DEPTH}")
        if len(part.message) > MAX_PART_FIELDS:
            raise TooComplex(f"a MIME part with over {MAX_PART_FIELDS} header fields")
        found.append(part)
        if len(found) > MAX_MIME_PARTS:
            raise TooComplex(f"over {MAX_MIME_PARTS} MIME parts")
        payload = part.message.get_payload()
        if not isinstance(payload, list) or content_type(part.message) in _FIELD_LIST_TYPES:
            continue
        inner = part.in_original or content_type(part.message) == "message/rfc822"
        children = [Part(child, part.depth + 1, inner)
                    for child in payload if isinstance(child, Message)]
        stack.extend(reversed(children))
    return found


# The email package parses these as a list of header blocks; they are leaves here.
# message/global-delivery-status is parsed like message/rfc822 (one header block and
# a body): also a leaf, whose blocks body_bytes joins back.
_FIELD_LIST_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status",
                               "message/disposition-notification"})


def content_type(message: Message) -> str:
    value = message.get("Content-Type")
    if value is None:
        return message.get_default_type()
    main = str(value).split(";", 1)[0].strip().lower()
    return main if "/" in main else "text/plain"


def header(message: Message, name: str) -> str | None:
    """A field's value, RFC 2047 words decoded, folding removed; None when absent."""
    value = message.get(name)
    return None if value is None else decode_words(str(value))


def decode_words(value: str) -> str:
    try:
        chunks = decode_header(value)
    except (HeaderParseError, ValueError, LookupError, UnicodeError, binascii.Error):
        return unfold(value)
    out: list[str] = []
    for chunk, charset in chunks:
        out.append(chunk if isinstance(chunk, str) else decode_bytes(chunk, charset))
    # decode_header drops the whitespace between an encoded word and plain text.
    joined = "".join(out) if len(out) == 1 else " ".join(s.strip() for s in out)
    return unfold(joined)


def unfold(value: str) -> str:
    return re.sub(r"\s+", " ", value).strip()


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes to text under any declared charset; unknown or hostile names fall back to
    UTF-8 with replacement, so a bad charset never raises."""
    name = (charset or "utf-8").strip().strip('"').lower() or "utf-8"
    # Mail labelled us-ascii (or nothing) often carries 8-bit UTF-8 all the same.
    if name in ("unknown-8bit", "x-unknown", "us-ascii", "ascii"):
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except (LookupError, TypeError, ValueError, UnicodeError, SystemError):
        return data.decode("utf-8", "replace")


@dataclass
class TextBudget:
    """Caps the bytes decoded from part bodies across one message."""

    remaining: int = MAX_DECODED_TOTAL

    def text(self, part: Message) -> str:
        """The part's body as text, transfer-decoded and charset-decoded, truncated to
        the per-part and remaining total budgets ("" once the budget is spent)."""
        if self.remaining <= 0:
            return ""
        # Transfer decoding costs at most the part's own size, which the input limit
        # bounds; the budget caps what is charset-decoded and scanned afterwards.
        data = body_bytes(part)[: min(MAX_TEXT_PER_PART, self.remaining)]
        self.remaining -= len(data)
        try:
            charset = part.get_content_charset()
        except (LookupError, ValueError, UnicodeError):
            charset = None
        return decode_bytes(data, charset)


def body_bytes(part: Message) -> bytes:
    """The body as the sender wrote it, transfer encoding undone. The email package
    splits delivery-status bodies into header blocks; they are joined back here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [_field_block(m) for m in payload if isinstance(m, Message)]
        encoding = str(part.get("Content-Transfer-Encoding", ""))
        return transfer_decode(b"\n\n".join(blocks), encoding)
    # compat32 undoes base64/QP without raising (bad padding becomes a defect) and
    # returns 8-bit bodies as their original bytes.
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _field_block(block: Message) -> bytes:
    # raw_items: the values as received; items() would turn 8-bit (RFC 6533 UTF-8)
    # values into replacement characters, and so would get_payload() without decode.
    head = "\n".join(f"{name}: {value}" for name, value in block.raw_items())
    data = head.encode("utf-8", "surrogateescape")
    body = block.get_payload(decode=True)
    if isinstance(body, bytes) and body.strip():
        data += b"\n\n" + body
    return data


def transfer_decode(data: bytes, encoding: str) -> bytes:
    cte = encoding.strip().lower()
    if cte == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return b""
    if cte == "quoted-printable":
        try:
            return quopri.decodestring(data)
        except (binascii.Error, ValueError):
            return data
    return data
