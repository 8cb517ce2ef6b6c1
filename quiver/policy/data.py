"""The `[data]` policy section: how long Quiver keeps what it records about recipients.

Read at synth (cdk/buckets.py turns it into the events bucket's lifecycle); a sender
never reads it. Changing it takes a `cdk deploy` of the stateful stack.

    [data]
    events_retention = "400d"

The default, 400 days, keeps every delivery, bounce and complaint of the last
thirteen months: a year-over-year comparison and a dispute about last year's mail
both still find their events, and nothing older stays. Every event names a
recipient address, which is personal data: keeping it forever, as an unbounded
bucket would, keeps it longer than any of those uses needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from quiver.units import parse_duration

KEYS = frozenset({"events_retention"})
DAY = 86400
DEFAULT_EVENTS_RETENTION_DAYS = 400
# Shorter than this and the events could be gone before anyone looks: the finals
# table keeps a final event's claim 15 days, and a monthly report reads a month.
MIN_EVENTS_RETENTION_DAYS = 31
# S3 takes any number of days; ten years bounds a typo ("4000d" for "400d").
MAX_EVENTS_RETENTION_DAYS = 3650


@dataclass(frozen=True, slots=True)
class DataPolicy:
    # Days an exported event object is kept before S3 expires it.
    events_retention_days: int = DEFAULT_EVENTS_RETENTION_DAYS


def parse_data(t: Mapping[str, Any], *, error: Callable[[str, str], None]) -> DataPolicy:
    """The section from its TOML table; each problem goes to `error(path, message)`."""
    d = DataPolicy()
    for key in t:
        if key not in KEYS:
            error(f"data.{key}", "unknown key (allowed: " + ", ".join(sorted(KEYS)) + ")")
    if "events_retention" not in t:
        return d
    path = "data.events_retention"
    try:
        seconds = parse_duration(t["events_retention"])
    except (ValueError, TypeError) as exc:
        error(path, str(exc))
        return d
    # S3 lifecycle rules count whole days: "36h" would silently become 1 or 2 days.
    if seconds % DAY:
        error(path, f"must be a whole number of days like '400d', got {t['events_retention']!r}")
        return d
    days = int(seconds // DAY)
    if not MIN_EVENTS_RETENTION_DAYS <= days <= MAX_EVENTS_RETENTION_DAYS:
        error(path, f"must be between {MIN_EVENTS_RETENTION_DAYS}d and "
                    f"{MAX_EVENTS_RETENTION_DAYS}d, got {days}d")
        return d
    return DataPolicy(events_retention_days=days)
