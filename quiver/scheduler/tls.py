"""TLS per destination: which mode a destination gets, the contexts for each mode, and
the memory of MX hosts whose STARTTLS handshake failed.

Modes are policy data (`[tls]`, see `quiver.policy.model.TlsPolicy`), matched like
throttles. What a connection actually used is reported on every attempt's event as
`tls_mode`: the destination's mode, or "plaintext-fallback" for an opportunistic
connection sent in plaintext because its MX failed the handshake (now or within
FALLBACK_MEMORY).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Literal

from quiver.policy import Policy, TlsMode, TlsPolicy
from quiver.scheduler.throttle import Destination, scope_applies, scope_specificity

# What an opportunistic connection fell back to, as events name it.
PLAINTEXT_FALLBACK: Literal["plaintext-fallback"] = "plaintext-fallback"
UsedTlsMode = TlsMode | Literal["plaintext-fallback"]
# How long an MX whose handshake failed is sent plaintext without trying STARTTLS
# again: long enough that a broken server is not handshaken (and reconnected to)
# on every connection, short enough that a fixed one gets TLS back the same day.
FALLBACK_MEMORY = 3600.0
# A hostile zone can name any number of MX hosts that fail their handshake: the
# memory forgets expired entries first, and the oldest beyond this many.
FALLBACK_ENTRIES = 10_000


def tls_mode_for(policy: TlsPolicy, dest: Destination) -> TlsMode:
    """The most specific rule's mode (as throttles: mx > domain > provider, literal >
    wildcard, longer > shorter, earlier wins), or the default."""
    best: tuple[tuple[int, int, int, int], TlsMode] | None = None
    for rule in policy.rules:
        if scope_applies(rule.scope, rule.pattern, dest) is None:
            continue
        rank = scope_specificity(rule.scope, rule.pattern, rule.index)
        if best is None or rank > best[0]:
            best = (rank, rule.mode)
    return policy.default if best is None else best[1]


def verifying_context(policy: Policy) -> ssl.SSLContext:
    """For "verify": the chain must reach `delivery.tls_ca_file` (or the system's CAs)
    and the certificate must name the MX host."""
    context = ssl.create_default_context(cafile=policy.delivery.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def unverified_context() -> ssl.SSLContext:
    """For "required" and "opportunistic": encrypted, whoever the certificate names
    (most MX certificates would fail verification; RFC 7435)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class FallbackMemory:
    """MX addresses (by host name and IP) whose STARTTLS handshake failed lately."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 hold: float = FALLBACK_MEMORY, entries: int = FALLBACK_ENTRIES) -> None:
        self._clock = clock
        self.hold = hold
        self._entries = entries
        self._until: dict[tuple[str, str], float] = {}

    def remember(self, mx: str, ip: str) -> None:
        now = self._clock()
        key = (mx, ip)
        self._until.pop(key, None)  # re-inserted last: the dict stays in expiry order
        self._until[key] = now + self.hold
        if len(self._until) > self._entries:
            for old in [k for k, until in self._until.items() if until <= now]:
                del self._until[old]
            while len(self._until) > self._entries:
                del self._until[next(iter(self._until))]

    def failed_lately(self, mx: str, ip: str) -> bool:
        until = self._until.get((mx, ip))
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._until[(mx, ip)]
        return False

    def __len__(self) -> int:
        return len(self._until)
