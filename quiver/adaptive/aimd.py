"""Additive increase, multiplicative decrease of a (source, provider)'s send rate.

Pure functions from the shared record (state.py) to the next one, or None when the
rate stays. The rate moves between the policy's floor and the static max (the
throttle's max_rate for that source and provider):
- a reduce rule that fires: new = max(floor, current * factor), at most once per rule
  window (the replies of one storm arrive over a window; cutting at each would take
  the rate to the floor at once);
- after a quiet window (no throttle reply, and no change): current + step, up to the
  static max ("reset" recovery: straight back to it).
Where no throttle sets a max_rate for the source and provider there is nothing to cut
from: the engine leaves it alone (and says so once).
"""

from __future__ import annotations

from dataclasses import replace

from quiver.adaptive.state import RateState
from quiver.policy.adaptive import AdaptivePolicy, ResponseRule


def reduced(state: RateState | None, *, source: str, provider: str, static_max: float,
            rule: ResponseRule, policy: AdaptivePolicy, reason: str,
            now: float) -> RateState | None:
    current = static_max if state is None else min(state.rate, static_max)
    if state is not None and now - state.reduced_at < rule.window:
        return None
    floor = min(policy.floor, static_max)
    factor = rule.factor if rule.factor is not None else policy.factor
    new = max(floor, current * factor)
    if new >= current:
        return None  # already at the floor
    return RateState(source=source, provider=provider, rate=new, static_max=static_max,
                     action="reduce", rule=rule.name, reason=reason, since=now,
                     reduced_at=now, version=1 if state is None else state.version + 1)


def raised(state: RateState, *, static_max: float, policy: AdaptivePolicy, reset: bool,
           now: float) -> RateState | None:
    """The next step up after a quiet window (the caller judged it quiet)."""
    current = min(state.rate, static_max)
    if current >= static_max or now - state.since < policy.quiet:
        return None
    new = static_max if reset else min(static_max, current + policy.step)
    return replace(state, rate=new, static_max=static_max, action="raise",
                   reason=f"quiet for {now - state.since:.0f}s: +{new - current:g}/s",
                   since=now, version=state.version + 1)


def floored(state: RateState | None, *, source: str, provider: str, static_max: float,
            rule: ResponseRule, policy: AdaptivePolicy, reason: str,
            now: float) -> RateState | None:
    """A suspension with recovery "floor": the rate starts again from the floor."""
    floor = min(policy.floor, static_max)
    if state is not None and state.rate <= floor:
        return None
    return RateState(source=source, provider=provider, rate=floor, static_max=static_max,
                     action="floor", rule=rule.name, reason=reason, since=now,
                     reduced_at=now, version=1 if state is None else state.version + 1)
