"""Which of our messages an inbound report is about: the first signed return path,
among the addresses the report offers, that verifies.

Candidates are tried in order of authority (the envelope recipient SES recorded
first, then what the report's text says). Trying several is safe: each must carry a
valid HMAC of a live key and name a stored reference, so text an attacker controls
can only point at a message whose token they already hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from quiver.returnpath import Refusal, ReturnPathVerifier, Verified

# At most this many distinct addresses are verified per report: each costs an HMAC
# and, when signed, a store read.
MAX_CANDIDATES = 4
# Refusals that say the address was not a token of ours at all; any other refusal
# (bad_hmac, expired_key, other_tenant...) is the more telling reason to count.
_NOT_OURS = ("malformed", "wrong_domain")


def recover(verifier: ReturnPathVerifier,
            candidates: Iterable[str | None]) -> Verified | Refusal:
    """The first candidate that verifies; else the most telling refusal (a token of ours
    that failed over an address that was none), or `malformed` when none was given."""
    seen: set[str] = set()
    refusals: list[Refusal] = []
    for candidate in candidates:
        if not candidate:
            continue
        address = candidate.strip().strip("<>").strip()
        if not address or address.lower() in seen:
            continue
        seen.add(address.lower())
        if len(seen) > MAX_CANDIDATES:
            break
        result = verifier.verify(address)
        if isinstance(result, Verified):
            return result
        refusals.append(result)
    if not refusals:
        return Refusal("malformed", "no return-path address in the report")
    return next((r for r in refusals if r.reason not in _NOT_OURS), refusals[0])
