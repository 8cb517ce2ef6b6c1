"""How well a sender found a receiver's hidden rate: pure figures over per-second counts.

Input: for each whole second of a phase (0, 1, 2, ... from the phase's start), how
many messages the receiver accepted and how many it refused; and the hidden rate R
of that phase. Output (`PhaseFigures`):

- seconds_to_converge: the first time after which the sender's rate (its attempts:
  accepted and refused), averaged over a rolling window of `window` seconds, stays
  within `tolerance` of R until the end of the phase. Attempts, not acceptances: a
  receiver accepts R whenever it is offered more, so a sender far over R would look
  converged by what it got through. The time is the end of that first good window:
  the earliest moment an observer could have said so. None when the phase never
  settles, or settled too late to tell (less than `min_settled` seconds before its
  end).
- converged_rate: the median attempts per second from then on (the sender's rate);
  accepted_rate: the median accepted per second from then on.
- deferred_share_after: refused / (accepted + refused) from then on: the receiver's
  deferrals of attempts the sender made after it had found the rate.

A phase that never converges still gets a rate and a deferred share, over its last
half (`settled_from`): what the sender settled into, if not on R.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Seconds over which the sender's rate is averaged: long enough that one second's
# burst or gap (a connection reopened after a 421) does not count as leaving R.
DEFAULT_WINDOW = 5
# "Within 20 % of R", as the adaptive rate's promise says.
DEFAULT_TOLERANCE = 0.2
# A phase must have been within the band this long to count as converged.
DEFAULT_MIN_SETTLED = 5


@dataclass(frozen=True, slots=True)
class Second:
    accepted: int
    refused: int


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    hidden_rate: float
    seconds: int  # how long the phase ran (whole seconds)
    seconds_to_converge: int | None
    settled_from: int  # the second the rate and deferred share are measured from
    converged_rate: float | None
    accepted_rate: float | None
    deferred_share_after: float | None
    accepted: int
    refused: int

    @property
    def converged(self) -> bool:
        return self.seconds_to_converge is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "hidden_rate": self.hidden_rate,
            "seconds": self.seconds,
            "converged": self.converged,
            "seconds_to_converge": self.seconds_to_converge,
            "settled_from": self.settled_from,
            "converged_rate": _round(self.converged_rate, 2),
            "accepted_rate": _round(self.accepted_rate, 2),
            "deferred_share_after": _round(self.deferred_share_after, 4),
            "accepted": self.accepted,
            "refused": self.refused,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def rolling_rates(seconds: Sequence[Second], window: int) -> list[float]:
    """The mean attempts per second over each full window: entry i covers seconds
    i .. i + window - 1 (so there are len - window + 1 of them)."""
    if window < 1:
        raise ValueError(f"window must be at least 1 second, got {window}")
    accepted = [s.accepted + s.refused for s in seconds]
    total = sum(accepted[:window])
    if len(accepted) < window:
        return []
    out = [total / window]
    for i in range(window, len(accepted)):
        total += accepted[i] - accepted[i - window]
        out.append(total / window)
    return out


def seconds_to_converge(seconds: Sequence[Second], *, rate: float,
                        window: int = DEFAULT_WINDOW, tolerance: float = DEFAULT_TOLERANCE,
                        min_settled: int = DEFAULT_MIN_SETTLED) -> int | None:
    """The end of the first window from which every later window is within the band."""
    if rate <= 0:
        raise ValueError(f"the hidden rate must be positive, got {rate}")
    low, high = rate * (1 - tolerance), rate * (1 + tolerance)
    rates = rolling_rates(seconds, window)
    start: int | None = None
    for i, value in enumerate(rates):
        if low <= value <= high:
            if start is None:
                start = i
        else:
            start = None
    if start is None:
        return None
    converged_at = start + window
    return converged_at if len(seconds) - converged_at >= min_settled else None


def phase_figures(seconds: Sequence[Second], *, rate: float, window: int = DEFAULT_WINDOW,
                  tolerance: float = DEFAULT_TOLERANCE,
                  min_settled: int = DEFAULT_MIN_SETTLED) -> PhaseFigures:
    converged_at = seconds_to_converge(seconds, rate=rate, window=window,
                                       tolerance=tolerance, min_settled=min_settled)
    settled_from = converged_at if converged_at is not None else len(seconds) // 2
    after = seconds[settled_from:]
    accepted = sum(s.accepted for s in after)
    attempts = accepted + sum(s.refused for s in after)
    return PhaseFigures(
        hidden_rate=rate,
        seconds=len(seconds),
        seconds_to_converge=converged_at,
        settled_from=settled_from,
        converged_rate=(float(statistics.median(s.accepted + s.refused for s in after))
                        if after else None),
        accepted_rate=float(statistics.median(s.accepted for s in after)) if after else None,
        deferred_share_after=(attempts - accepted) / attempts if attempts else None,
        accepted=sum(s.accepted for s in seconds),
        refused=sum(s.refused for s in seconds),
    )


def per_second(counts: Sequence[tuple[int, int, int]], *, start: int,
               end: int) -> list[Second]:
    """(second, accepted, refused) rows (seconds without traffic missing) as one
    `Second` for each of start .. end - 1."""
    by_second = {second: Second(accepted, refused) for second, accepted, refused in counts}
    return [by_second.get(s, Second(0, 0)) for s in range(start, end)]


def median_of(values: Sequence[float | int | None]) -> float | None:
    """The median of the values that exist (a run that never converged has no time)."""
    present = [float(v) for v in values if v is not None]
    return float(statistics.median(present)) if present else None
