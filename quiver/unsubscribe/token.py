"""One-click unsubscribe tokens: what a List-Unsubscribe URL names, signed.

Unlike a return path (quiver.returnpath.token), a URL has room for the data
itself, so the token carries tenant, campaign, message id and recipient and the
endpoint needs no store to read them back: links keep working for as long as
their key verifies, however old the mail.

Layout, base64url (RFC 4648 5) without padding:

    version (1) | key id (2, big-endian) | 4 x (length (1) | UTF-8) | HMAC-SHA256 (first 16)

The four fields are tenant, campaign, message id, recipient; a length of 255
stands for "none" (tenant and campaign only), so None and "" stay apart. The
MAC covers everything before it, keyed by the return-path key ring under its own
context string: the same keys, but a return-path MAC never verifies as an
unsubscribe MAC or the other way round. 128 bits of MAC: anyone can POST guesses
to the endpoint, so a forgery must be out of reach online too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

VERSION = 1
MAC_BYTES = 16
NONE = 255
# The longest field that fits its one-byte length (255 means none).
MAX_FIELD = 254
# The longest token `encode` makes (four fields of MAX_FIELD octets) is 1386
# characters; longer text is not a token and is refused unread.
MAX_TOKEN_CHARS = 1386
_MAC_CONTEXT = b"quiver-unsubscribe-v1\0"


class TokenError(ValueError):
    """Data that cannot go into a token (a field too long)."""


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom and what an unsubscribe is about."""

    tenant: str | None
    campaign: str | None
    message_id: str
    recipient: str


@dataclass(frozen=True, slots=True)
class Token:
    """A decoded token, before its MAC is checked."""

    key_id: int
    subject: Subject
    signed_part: bytes
    mac: bytes


def mac(secret: bytes, signed_part: bytes) -> bytes:
    return hmac.new(secret, _MAC_CONTEXT + signed_part, hashlib.sha256).digest()[:MAC_BYTES]


def encode(*, key_id: int, secret: bytes, subject: Subject) -> str:
    """The token for `subject`, signed by key `key_id`; TokenError if a field is too long."""
    parts = [bytes([VERSION]), key_id.to_bytes(2, "big")]
    for name, value in (("tenant", subject.tenant), ("campaign", subject.campaign),
                        ("message id", subject.message_id), ("recipient", subject.recipient)):
        if value is None:
            parts.append(bytes([NONE]))
            continue
        data = value.encode("utf-8")
        if len(data) > MAX_FIELD:
            raise TokenError(f"{name} is {len(data)} octets; a token holds at most {MAX_FIELD}")
        parts.append(bytes([len(data)]) + data)
    signed = b"".join(parts)
    raw = signed + mac(secret, signed)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(text: str) -> Token | str:
    """The token in `text`, or why it is not one (never raises)."""
    if not text or len(text) > MAX_TOKEN_CHARS:
        return f"{len(text)} characters"
    if not text.isascii() or "=" in text:
        return "not base64url"
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return "not base64url"
    # Canonical spelling only: trailing bits set in the last character decode to the
    # same bytes, and a second spelling of one token would be a second URL for it.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        return "not base64url"
    if len(raw) < 3 + 4 + MAC_BYTES or raw[0] != VERSION:
        return f"not a version {VERSION} token"
    key_id = int.from_bytes(raw[1:3], "big")
    at = 3
    fields: list[str | None] = []
    body_end = len(raw) - MAC_BYTES
    for _ in range(4):
        if at >= body_end:
            return "truncated"
        length = raw[at]
        at += 1
        if length == NONE:
            fields.append(None)
            continue
        if at + length > body_end:
            return "truncated"
        try:
            fields.append(raw[at:at + length].decode("utf-8"))
        except UnicodeDecodeError:
            return "a field is not UTF-8"
        at += length
    if at != body_end:
        return "trailing data"
    tenant, campaign, message_id, recipient = fields
    if message_id is None or recipient is None:
        return "no message id or recipient"
    return Token(key_id=key_id, subject=Subject(tenant=tenant, campaign=campaign,
                                                message_id=message_id, recipient=recipient),
                 signed_part=raw[:body_end], mac=raw[body_end:])
