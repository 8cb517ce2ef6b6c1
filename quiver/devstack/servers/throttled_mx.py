"""A receiving MX that rate-limits each client IP as Gmail does, for the adaptive tests.

It accepts at most `rate` messages per second from each client IP (a token bucket
with a small burst) and answers the rest with Gmail's rate-limit reply, `421 4.7.28`,
at the end of DATA, then closes the connection as a 421 means. The sender is not
told the rate; it has to find it from the replies. `set_rate` changes it while mail
flows (a provider that starts trusting an IP more), and the counts of accepted and
refused messages per second are what a convergence run reads.

The SMTP side is the local MX (`mx_server`), run in this process on its own loop;
only the end of DATA asks this module's gate. Times come from an injected clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quiver.devstack.servers.mx import MxServer
from quiver.devstack.servers.mx_server import MxConfig

# Gmail's reply to a sending IP over its rate, as Gmail words it (the bracket names
# the client IP; the address is filled in per client).
RATE_LIMITED_LINES = (
    "[{ip}] Our system has detected an unusual rate of unsolicited mail",
    "originating from your IP address. To protect our users from spam, mail sent",
    "from your IP address has been temporarily rate limited. Please visit",
    "https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our",
    "Bulk Email Senders Guidelines.",
)
RATE_LIMITED_STATUS = "421"
RATE_LIMITED_ENHANCED = "4.7.28"
# The bucket holds this many seconds' worth of messages: a sender pacing at the rate
# with a little jitter is not refused, one that bursts well past it is.
BURST_SECONDS = 0.25
# Clock readings are floats: a token earned over exactly 1/rate seconds may come out
# a hair under 1, and a sender paced at the very rate must not be refused for that.
_TOKEN_SLACK = 1e-9


def rate_limited_reply(ip: str) -> str:
    """The multi-line 421 4.7.28 reply for client `ip`."""
    last = len(RATE_LIMITED_LINES) - 1
    return "\r\n".join(
        f"{RATE_LIMITED_STATUS}{' ' if n == last else '-'}{RATE_LIMITED_ENHANCED} "
        + line.format(ip=ip)
        for n, line in enumerate(RATE_LIMITED_LINES)
    )


class TokenBucket:
    """`rate` tokens a second up to `burst` (at least 1); a message takes one.

    Not thread-safe by itself: `RateGate` holds its lock around every call.
    """

    def __init__(self, *, rate: float, clock: Callable[[], float],
                 burst_seconds: float = BURST_SECONDS) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self._clock = clock
        self._burst_seconds = burst_seconds
        self.rate = rate
        self.tokens = self.burst
        self._at = clock()

    @property
    def burst(self) -> float:
        return max(1.0, self.rate * self._burst_seconds)

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (it never should) refills nothing rather than draining.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        """Whether a message may pass now (and if so, its token is spent)."""
        self._refill()
        if self.tokens >= 1.0 - _TOKEN_SLACK:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def set_rate(self, rate: float) -> None:
        """From now on, `rate` a second; tokens already earned are kept (up to the burst)."""
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self._refill()
        self.rate = rate
        self.tokens = min(self.tokens, self.burst)


@dataclass(frozen=True, slots=True)
class SecondCount:
    """What the MX did in one whole second of its clock (`second` = floor of the time)."""

    second: int
    accepted: int
    refused: int


class RateGate:
    """One token bucket per client IP, and counts per second of what passed.

    Called from the MX's loop thread (`__call__`) and read from others (`counts`,
    `set_rate`), hence the lock.
    """

    def __init__(self, *, rate: float, clock: Callable[[], float] = time.monotonic,
                 burst_seconds: float = BURST_SECONDS) -> None:
        TokenBucket(rate=rate, clock=clock)  # the same checks, before anything is kept
        self._rate = rate
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._buckets: dict[str, TokenBucket] = {}
        self._counts: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def __call__(self, ip: str) -> str | None:
        """None to accept a message from `ip`, or the 421 4.7.28 reply that refuses it."""
        with self._lock:
            bucket = self._buckets.get(ip)
            if bucket is None:
                bucket = self._buckets[ip] = TokenBucket(
                    rate=self._rate, clock=self._clock, burst_seconds=self._burst_seconds)
            passed = bucket.take()
            count = self._counts.setdefault(math.floor(self._clock()), [0, 0])
            count[0 if passed else 1] += 1
        return None if passed else rate_limited_reply(ip)

    def set_rate(self, rate: float) -> None:
        """Every client IP's limit becomes `rate` messages a second, from now on."""
        with self._lock:
            for bucket in self._buckets.values():
                bucket.set_rate(rate)
            self._rate = rate

    def counts(self, *, since: float | None = None) -> list[SecondCount]:
        """Every second with traffic, oldest first (from the second holding `since`)."""
        first = -math.inf if since is None else math.floor(since)
        with self._lock:
            return [SecondCount(s, a, r) for s, (a, r) in sorted(self._counts.items())
                    if s >= first]

    def now(self) -> float:
        return self._clock()


class ThrottledMx:
    """The local MX (in this process) behind a `RateGate`."""

    def __init__(self, config: MxConfig, gate: RateGate) -> None:
        self.gate = gate
        self.server = MxServer(config, gate=gate)
        self.address = self.server.address

    def set_rate(self, rate: float) -> None:
        self.gate.set_rate(rate)

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> ThrottledMx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_throttled_mx(
    *,
    rate: float,
    store_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    hostname: str = "mx.throttled.test",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ThrottledMx:
    """Start it; it listens on (host, port) when this returns (port 0: a free one)."""
    gate = RateGate(rate=rate, clock=clock)
    config = MxConfig(store_dir=store_dir, host=host, port=port, hostname=hostname,
                      tls_cert=tls_cert, tls_key=tls_key)
    return ThrottledMx(config, gate)
