"""Return-path tokens: `b-<token>@<bounce domain>`, compact, signed, case-insensitive.

Why a reference and not the data: the local part may hold 64 octets (RFC 5321
4.5.3.1.1), and a message id (up to 128 characters) and a recipient (up to 254)
do not fit, let alone a tenant and a campaign. The token therefore carries a
96-bit reference, a digest of (tenant, campaign, message id, recipient), and the
sender stores that tuple under the reference (`ReturnPathStore`) before the
transaction that uses it. Verification checks the HMAC first, then looks the
reference up, and checks that the stored tuple hashes back to it.

Layout: 25 bytes, base32 (RFC 4648, no padding) in lower case, 40 characters:

    version (1) | key id (2, big-endian) | reference (12) | HMAC-SHA256 (first 10)

The MAC covers the first 15 bytes and the bounce domain, so a token moved to
another domain does not verify. Base32 is one case in the alphabet: receivers that
fold a local part to lower (or upper) case leave it readable. 25 bytes are exactly
40 base32 characters, so every character carries data and a token has one spelling
only: any edited character changes the bytes the MAC checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

VERSION = 1
PREFIX = "b-"
REFERENCE_BYTES = 12
MAC_BYTES = 10  # 80 bits: forging one needs ~2^79 tries, each a bounce mailed to us
TOKEN_BYTES = 1 + 2 + REFERENCE_BYTES + MAC_BYTES
TOKEN_CHARS = TOKEN_BYTES * 8 // 5
LOCAL_PART_CHARS = len(PREFIX) + TOKEN_CHARS  # 42, under RFC 5321's 64
_MAC_CONTEXT = b"quiver-return-path-v1\0"


@dataclass(frozen=True, slots=True)
class Token:
    """What a token says, before the store is asked."""

    version: int
    key_id: int
    reference: bytes
    mac: bytes

    @property
    def signed_part(self) -> bytes:
        return bytes([self.version]) + self.key_id.to_bytes(2, "big") + self.reference


def reference(*, message_id: str, recipient: str, tenant: str | None,
              campaign: str | None) -> bytes:
    """The digest that names one (tenant, campaign, message id, recipient).

    JSON keeps None apart from "" and every field apart from the next. The same
    tuple gives the same reference, so a retry rewrites the same store item."""
    data = json.dumps([tenant, campaign, message_id, recipient], ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(b"quiver-return-path-ref\0" + data).digest()[:REFERENCE_BYTES]


def mac(secret: bytes, signed_part: bytes, bounce_domain: str) -> bytes:
    data = _MAC_CONTEXT + signed_part + bounce_domain.lower().encode("ascii")
    return hmac.new(secret, data, hashlib.sha256).digest()[:MAC_BYTES]


def encode(*, key_id: int, secret: bytes, ref: bytes, bounce_domain: str) -> str:
    """The local part `b-<token>` for `ref`, signed by key `key_id`."""
    signed = bytes([VERSION]) + key_id.to_bytes(2, "big") + ref
    raw = signed + mac(secret, signed, bounce_domain)
    return PREFIX + base64.b32encode(raw).decode("ascii").lower()


def decode(local_part: str) -> Token | None:
    """The token in `local_part` (any case), or None if it is not one of ours."""
    if len(local_part) != LOCAL_PART_CHARS or local_part[:2].lower() != PREFIX:
        return None
    text = local_part[2:]
    if not text.isascii():
        return None
    try:
        raw = base64.b32decode(text.upper())
    except (binascii.Error, ValueError):
        return None
    if raw[0] != VERSION:
        return None
    return Token(version=raw[0], key_id=int.from_bytes(raw[1:3], "big"),
                 reference=raw[3:3 + REFERENCE_BYTES], mac=raw[3 + REFERENCE_BYTES:])
