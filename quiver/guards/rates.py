"""Window sums over bucketed counts, and the judgement of a tenant's or campaign's
rates against its `[guards]` limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from quiver.guards.counts import Counts, bucket_of
from quiver.policy.guards import BUCKET_SECONDS, GuardLimits, GuardsPolicy

COMPLAINT_RULE: Final = "guard-complaint-rate"
HARD_BOUNCE_RULE: Final = "guard-hard-bounce-rate"


def first_bucket(now: float, window: float, bucket_seconds: int = BUCKET_SECONDS) -> int:
    """The oldest bucket inside a window ending now: the window is the current bucket
    and the ones before it, window / bucket_seconds in all."""
    return bucket_of(now, bucket_seconds) - int(window) + bucket_seconds


def window_sum(buckets: Mapping[int, Counts], *, now: float, window: float,
               bucket_seconds: int = BUCKET_SECONDS) -> Counts:
    """The counts of the buckets inside the window ending `now` (later buckets, from
    records stamped ahead of this clock, count too: they are not outside the window)."""
    since = first_bucket(now, window, bucket_seconds)
    total = Counts()
    for start, counts in buckets.items():
        if start >= since:
            total = total + counts
    return total


@dataclass(frozen=True, slots=True)
class Breach:
    """A rate at or over its threshold, with what it was judged on."""

    rule: str
    what: str  # "complaint" or "hard bounce"
    count: int
    attempts: int
    threshold: float
    window: float

    @property
    def rate(self) -> float:
        return self.count / self.attempts

    def reason(self) -> str:
        """e.g. "complaint rate 0.42 % (21 of 5000) over 24h ≥ 0.3 %"."""
        return (f"{self.what} rate {_percent(self.rate)} ({self.count} of {self.attempts}) "
                f"over {_span(self.window)} ≥ {_percent(self.threshold)}")


def judge(buckets: Mapping[int, Counts], *, now: float, policy: GuardsPolicy,
          limits: GuardLimits, scale: float = 1.0) -> list[Breach]:
    """The rates of `buckets` (one tenant's or campaign's) at or over `limits` (each
    threshold times `scale`): the complaint rate first. Nothing below `min_volume`
    attempts in a rate's window."""
    if not limits.enabled:
        return []
    out = []
    for rule, what, window, threshold in (
        (COMPLAINT_RULE, "complaint", policy.complaint_window, limits.complaint_rate),
        (HARD_BOUNCE_RULE, "hard bounce", policy.hard_bounce_window,
         limits.hard_bounce_rate),
    ):
        threshold *= scale
        counts = window_sum(buckets, now=now, window=window)
        count = counts.complaints if rule == COMPLAINT_RULE else counts.hard_bounces
        if counts.attempts >= limits.min_volume and count >= threshold * counts.attempts:
            out.append(Breach(rule=rule, what=what, count=count, attempts=counts.attempts,
                              threshold=threshold, window=window))
    return out


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}".rstrip("0").rstrip(".") + " %"


def _span(seconds: float) -> str:
    # Days from two on: "24h" reads as the providers state their window.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= (2 * size if unit == "d" else size) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
