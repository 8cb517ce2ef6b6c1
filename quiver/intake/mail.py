"""One inbound mail as SES stored it in the inbound bucket, and where it was delivered.

SES writes the message as received, with its own fields on top: `Return-Path` (the
envelope sender) and a `Received` field naming the envelope recipient in its `for`
clause when the transaction had one recipient, which a VERP address always has.
That top field is written by SES, not by the sender of the mail; fields below it
are the sender's and prove nothing (the return path's HMAC decides either way).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from quiver.feedback.mime import Malformed, TooComplex, every, first, parse_fields, split_head

# `for <b-...@bounces.example.com>;` or `for b-...@bounces.example.com;` (RFC 5321 4.4).
_FOR_CLAUSE = re.compile(r"\bfor\s+<?([^\s<>;]{1,320}@[^\s<>;]{1,255})>?\s*(?:;|$)",
                         re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class InboundMail:
    bucket: str
    key: str
    raw: bytes
    # When SES stored it (the object's LastModified, epoch seconds): the events' `at`,
    # so processing the object again gives the same records.
    stored_at: float

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def identity(self) -> str:
        """The batch id of this object's events: the same for the same object (bucket,
        key and bytes), whenever and however often it is processed."""
        digest = hashlib.sha256(f"{self.bucket}\0{self.key}\0".encode())
        digest.update(self.raw)
        return digest.hexdigest()[:32]

    def envelope(self) -> tuple[str | None, str | None]:
        """(envelope recipient, envelope sender) as SES recorded them in its top
        `Received` and `Return-Path` fields; None where absent or unreadable."""
        try:
            fields = parse_fields(split_head(self.raw)[0])
        except (TooComplex, Malformed):
            return None, None
        received = every(fields, "received")
        recipient = None
        if received:
            found = _FOR_CLAUSE.search(received[0])
            recipient = found.group(1) if found else None
        sender = first(fields, "return-path")
        if sender is not None:
            sender = sender.strip().strip("<>").strip() or None
        return recipient, sender
