"""Verify the reporter's DKIM signature on an inbound report (dkimpy).

A verified signature proves only that the signing domain (d=) sent the report;
whether that domain is a reporter worth believing is `trust`'s question. The
DNS lookup is injected (`dnsfunc`, dkimpy's own hook), so tests and the local
stack serve keys from the local DNS server through `routing.txt.TxtResolver`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dkim

from quiver.feedback.limits import MAX_DKIM_SIGNATURES, MAX_REPORT_BYTES
from quiver.feedback.mime import TooComplex, parse_fields, split_head
from quiver.routing.txt import TxtLookupError

DkimStatus = Literal["verified", "failed", "none"]
DnsFunc = Callable[..., bytes | None]

# RFC 8301 3.2: verifiers MUST NOT accept RSA keys under 1024 bits.
MIN_KEY_BITS = 1024


@dataclass(frozen=True, slots=True)
class DkimVerdict:
    status: DkimStatus
    # d= of the signature that verified; else of the first one tried; None when unsigned.
    domain: str | None
    reason: str


class _Notes(logging.Handler):
    """Keeps what dkimpy logs while verifying: its only report of why a key failed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(record.getMessage())


def verify_report_dkim(raw: bytes, *, dnsfunc: DnsFunc) -> DkimVerdict:
    """The first of at most MAX_DKIM_SIGNATURES signatures that verifies, or why none did.
    Never raises: a report is untrusted input to the verifier too."""
    if len(raw) > MAX_REPORT_BYTES:
        return DkimVerdict("failed", None, f"not verified: over {MAX_REPORT_BYTES} bytes")
    try:
        # The parser's bounds first: dkimpy reads every header field it is given.
        parse_fields(split_head(raw)[0])
    except TooComplex as exc:
        return DkimVerdict("failed", None, f"not verified: {exc}")
    notes = _Notes()
    # A Logger made directly is not registered with logging's manager: one per
    # call costs nothing beyond this call and keeps calls apart.
    logger = logging.Logger("quiver.feedback.dkim", logging.DEBUG)
    logger.addHandler(notes)
    try:
        verifier = dkim.DKIM(raw, logger=logger, minkey=MIN_KEY_BITS)
        count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    except Exception as exc:  # dkimpy's parser on hostile bytes
        return DkimVerdict("failed", None, f"unreadable message: {_why(exc)}")
    if count == 0:
        return DkimVerdict("none", None, "no DKIM-Signature field")
    first: DkimVerdict | None = None
    for idx in range(min(count, MAX_DKIM_SIGNATURES)):
        verdict = _one(verifier, idx, dnsfunc, notes)
        if verdict.status == "verified":
            return verdict
        first = first or verdict
    assert first is not None
    return first


def _one(verifier: dkim.DKIM, idx: int, dnsfunc: DnsFunc, notes: _Notes) -> DkimVerdict:
    notes.errors.clear()
    verifier.domain = None
    try:
        ok = bool(verifier.verify(idx=idx, dnsfunc=dnsfunc))
        why = "signature did not verify" if not ok else "signature verified"
    except TxtLookupError as exc:
        ok, why = False, f"key lookup failed: {exc}"
    except Exception as exc:  # dkimpy raises more than DKIMException
        ok, why = False, _why(exc)
    domain = _domain(verifier.domain)
    if ok:
        return DkimVerdict("verified", domain, why)
    if notes.errors:
        why = notes.errors[0]
    return DkimVerdict("failed", domain, f"signature {idx + 1}: {why}"[:500])


def _domain(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").lower().rstrip(".") or None
    return None


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
