"""The `[guards]` policy section: when a tenant's or a campaign's complaint or hard
bounce rate pauses its mail (quiver.guards applies it in the export path).

    [guards]
    complaint_rate = 0.003        # complaints / attempts over complaint_window
    complaint_window = "24h"
    hard_bounce_rate = 0.05       # hard bounces / attempts over hard_bounce_window
    hard_bounce_window = "1h"
    min_volume = 500              # no judgement on fewer attempts in the window
    pause_for = "12h"             # absent: paused until an operator lifts it

    [guards.tenants.acme]         # per tenant (or [guards.campaigns.<name>])
    complaint_rate = 0.001
    enabled = false               # never judged

Windows are shared by every tenant and campaign (the counters' layout in the
controls table follows them); thresholds, min_volume, pause_for and enabled can be
set per tenant and per campaign. Live: the export path re-reads the policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from quiver.policy.durations import bounded_duration
from quiver.units import parse_duration

# The counters are kept in buckets of this many seconds: a window is a whole number
# of them, and a window's sum reads window / BUCKET items (144 for 24 h).
BUCKET_SECONDS = 600
# Longer windows read more buckets per judgement and keep counters longer; a week
# covers the slowest feedback loops (complaints arrive within days of delivery).
MIN_WINDOW, MAX_WINDOW = float(BUCKET_SECONDS), 7 * 86400.0
# A pause shorter than the window would lift while the rate that caused it still
# stands; a pause longer than 30 days is an operator's decision, not a default.
MIN_PAUSE, MAX_PAUSE = 300.0, 30 * 86400.0
MAX_MIN_VOLUME = 10_000_000
WINDOW_KEYS = frozenset({"complaint_window", "hard_bounce_window"})
LIMIT_KEYS = frozenset({"complaint_rate", "hard_bounce_rate", "min_volume", "pause_for",
                        "enabled"})
KEYS = WINDOW_KEYS | LIMIT_KEYS | {"tenants", "campaigns"}


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The thresholds one tenant or campaign is judged by."""

    # Mailbox providers' published bar (Gmail, Yahoo: keep complaints under 0.3 %).
    complaint_rate: float = 0.003
    # Past 5 % hard bounces a list is stale or bought: receivers start blocking.
    hard_bounce_rate: float = 0.05
    # Below this many attempts a few complaints swing the rate too far to act on.
    min_volume: int = 500
    # Seconds; None: the pause stands until an operator lifts it (`quiver ctl resume`).
    pause_for: float | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class GuardsPolicy:
    complaint_window: float = 86400.0
    hard_bounce_window: float = 3600.0
    defaults: GuardLimits = field(default_factory=GuardLimits)
    tenants: Mapping[str, GuardLimits] = field(default_factory=dict)
    campaigns: Mapping[str, GuardLimits] = field(default_factory=dict)

    def limits(self, scope: str, name: str) -> GuardLimits:
        """The limits of tenant or campaign `name` (scope "tenant" or "campaign")."""
        overrides = self.tenants if scope == "tenant" else self.campaigns
        return overrides.get(name, self.defaults)

    @property
    def longest_window(self) -> float:
        return max(self.complaint_window, self.hard_bounce_window)


def parse_guards(t: Mapping[str, Any], *, error: Callable[[str, str], None]) -> GuardsPolicy:
    """The section from its TOML table; each problem goes to `error(path, message)`."""
    for key in t:
        if key not in KEYS:
            error(f"guards.{key}", "unknown key (allowed: " + ", ".join(sorted(KEYS)) + ")")
    d = GuardsPolicy()

    def window(key: str, default: float) -> float:
        value = bounded_duration(t, key, section="guards", default=default, low=MIN_WINDOW,
                                 high=MAX_WINDOW, error=error)
        if value % BUCKET_SECONDS:
            error(f"guards.{key}", f"must be a whole number of {BUCKET_SECONDS // 60} minutes "
                  "(the counters' bucket)")
            return default
        return value

    defaults = _limits(t, "guards", GuardLimits(), error)
    return GuardsPolicy(
        complaint_window=window("complaint_window", d.complaint_window),
        hard_bounce_window=window("hard_bounce_window", d.hard_bounce_window),
        defaults=defaults,
        tenants=_overrides(t, "tenants", defaults, error),
        campaigns=_overrides(t, "campaigns", defaults, error),
    )


def _overrides(t: Mapping[str, Any], key: str, defaults: GuardLimits,
               error: Callable[[str, str], None]) -> dict[str, GuardLimits]:
    table = t.get(key, {})
    if not isinstance(table, dict):
        error(f"guards.{key}", f"expected a table of names, got {type(table).__name__}")
        return {}
    out: dict[str, GuardLimits] = {}
    for name, section in table.items():
        path = f"guards.{key}.{name}"
        if not isinstance(section, dict):
            error(path, f"expected a table, got {type(section).__name__}")
            continue
        for k in section:
            if k not in LIMIT_KEYS:
                error(f"{path}.{k}", "unknown key (allowed: "
                      + ", ".join(sorted(LIMIT_KEYS)) + ")")
        out[name] = _limits(section, path, defaults, error)
    return out


def _limits(t: Mapping[str, Any], path: str, base: GuardLimits,
            error: Callable[[str, str], None]) -> GuardLimits:
    """`base` with the limit keys `t` sets; a bad value keeps the base's."""
    out = base

    def rate(key: str, default: float) -> float:
        if key not in t:
            return default
        value = t[key]
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not 0 < value <= 1:
            error(f"{path}.{key}", f"expected a fraction in (0, 1] such as 0.003 "
                  f"(0.3 %), got {value!r}")
            return default
        return float(value)

    out = replace(out, complaint_rate=rate("complaint_rate", base.complaint_rate),
                  hard_bounce_rate=rate("hard_bounce_rate", base.hard_bounce_rate))
    if "min_volume" in t:
        value = t["min_volume"]
        if isinstance(value, bool) or not isinstance(value, int) \
                or not 1 <= value <= MAX_MIN_VOLUME:
            error(f"{path}.min_volume", f"expected an integer from 1 to {MAX_MIN_VOLUME}, "
                  f"got {value!r}")
        else:
            out = replace(out, min_volume=value)
    if "pause_for" in t:
        value = t["pause_for"]
        if value == "until-lifted":
            out = replace(out, pause_for=None)
        else:
            try:
                seconds = parse_duration(value)
            except (ValueError, TypeError) as exc:
                error(f"{path}.pause_for", f"{exc} (or \"until-lifted\")")
            else:
                if not MIN_PAUSE <= seconds <= MAX_PAUSE:
                    error(f"{path}.pause_for", f"must be between {MIN_PAUSE:g}s and "
                          f"{MAX_PAUSE:g}s (or \"until-lifted\")")
                else:
                    out = replace(out, pause_for=seconds)
    if "enabled" in t:
        value = t["enabled"]
        if not isinstance(value, bool):
            error(f"{path}.enabled", f"expected true or false, got {value!r}")
        else:
            out = replace(out, enabled=value)
    return out
