"""The `[controls]` policy section: how senders follow operator controls (`quiver ctl`).

Live: a reload applies it at the next poll and the next paused message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quiver.policy.durations import bounded_duration

KEYS = frozenset({"poll", "recheck"})
# A control is in effect on every sender within poll + the time its read takes; the
# bound promised to operators is 10 s, so poll stays well under it.
MIN_POLL, MAX_POLL = 0.5, 5.0
# A paused message goes back to the queue for this long at most (its pause's expiry,
# if sooner): each recheck is a receive and a send per paused message, so a long
# pause of much mail costs queue requests; a longer recheck costs up to that much
# delay after a resume. SQS delays a message 15 min at most.
MIN_RECHECK, MAX_RECHECK = 5.0, 900.0


@dataclass(frozen=True, slots=True)
class ControlsPolicy:
    # How often each sender reads the controls table (one strongly consistent Query).
    poll: float = 2.0
    # How long a paused message waits in the queue before it is looked at again.
    recheck: float = 60.0


def parse_controls(t: Mapping[str, Any], *, error: Callable[[str, str], None]) -> ControlsPolicy:
    """The section from its TOML table; each problem goes to `error(path, message)`."""
    d = ControlsPolicy()
    for key in t:
        if key not in KEYS:
            error(f"controls.{key}", "unknown key (allowed: " + ", ".join(sorted(KEYS)) + ")")

    def duration(key: str, default: float, low: float, high: float) -> float:
        return bounded_duration(t, key, section="controls", default=default, low=low,
                                high=high, error=error)

    return ControlsPolicy(poll=duration("poll", d.poll, MIN_POLL, MAX_POLL),
                          recheck=duration("recheck", d.recheck, MIN_RECHECK, MAX_RECHECK))
