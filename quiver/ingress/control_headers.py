"""`X-Quiver-*` header fields: envelope fields carried in a submitted message.

An SMTP client has no other place for the queue contract's pool, tenant, campaign
and meta, so they travel as header fields and are taken out before the message is
enqueued: the recipient never sees them, and every other byte of the message is
kept exactly as submitted (a DKIM signature the client made stays valid as long as
it did not sign these fields).

    X-Quiver-Pool: transactional
    X-Quiver-Tenant: acme
    X-Quiver-Campaign: spring-sale
    X-Quiver-Meta-Order: 42          ->  meta {"order": "42"}

Any other `X-Quiver-` name, a field given twice, or a value that is not UTF-8 is
refused: a typo is an error, as in the queue contract, not a silently dropped field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = b"x-quiver-"
META_PREFIX = "meta-"
_SINGLE = {"pool", "tenant", "campaign"}
# RFC 5322 2.2: a field name is printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")
_UNFOLD = re.compile(r"\r\n(?=[ \t])")


class ControlHeaderError(ValueError):
    """A control field that cannot be mapped; the message names the field and rule."""


@dataclass(frozen=True, slots=True)
class ControlFields:
    pool: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


def take_control_headers(message: bytes) -> tuple[ControlFields, bytes]:
    """The X-Quiver-* fields of `message`'s header section, and the message without them."""
    end = _header_end(message)
    if PREFIX not in message[:end].lower():
        return ControlFields(), message
    kept: list[bytes] = []
    found: dict[str, str] = {}
    meta: dict[str, str] = {}
    for lines in _fields(message[:end]):
        name, _, _ = lines.partition(b":")
        if not name.lower().startswith(PREFIX) or not _FIELD_NAME.match(name):
            kept.append(lines)
            continue
        key = name[len(PREFIX):].decode("ascii").lower()
        value = _value(lines, name)
        if key.startswith(META_PREFIX) and len(key) > len(META_PREFIX):
            meta_key = key[len(META_PREFIX):]
            if meta_key in meta:
                raise ControlHeaderError(f"{name.decode()} given twice")
            meta[meta_key] = value
        elif key in _SINGLE:
            if key in found:
                raise ControlHeaderError(f"{name.decode()} given twice")
            found[key] = value
        else:
            raise ControlHeaderError(
                f"unknown header {name.decode()}: X-Quiver- fields are Pool, Tenant, "
                "Campaign and Meta-<key>")
    fields = ControlFields(pool=found.get("pool"), tenant=found.get("tenant"),
                           campaign=found.get("campaign"), meta=meta)
    return fields, b"".join(kept) + message[end:]


def _header_end(message: bytes) -> int:
    """Where the header section ends: just after the CRLF that ends its last field (the
    empty line stays with the body), or the whole message if it has no body."""
    if message.startswith(b"\r\n"):
        return 0
    at = message.find(b"\r\n\r\n")
    return len(message) if at < 0 else at + 2


def _fields(section: bytes) -> list[bytes]:
    """Each field with its continuation lines, bytes as they are (CRLF included)."""
    out: list[bytes] = []
    start = 0
    while start < len(section):
        end = section.find(b"\r\n", start)
        end = len(section) if end < 0 else end + 2
        line = section[start:end]
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
        start = end
    return out


def _value(lines: bytes, name: bytes) -> str:
    try:
        text = lines[len(name) + 1:].decode("utf-8")
    except UnicodeDecodeError:
        raise ControlHeaderError(f"{name.decode()} is not UTF-8") from None
    value = _UNFOLD.sub("", text).strip()
    if not value:
        raise ControlHeaderError(f"{name.decode()} is empty")
    return value
