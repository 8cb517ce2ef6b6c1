"""Status lines of warming sources: for `quiver status` (from the shared counts: each
source's day, today's cap and what was taken of it per provider, held and why) and for
`quiver config check` (from the policy: each plan and its first day's caps)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from quiver.policy.warmup import WarmupPolicy
from quiver.storage.warmup import NO_PROVIDER, CapUse, DayState


def status_rows(uses: Sequence[CapUse], states: Mapping[str, DayState],
                date: str) -> list[dict[str, Any]]:
    """One row per warming source known to the store: its day, template, held reason
    and today's caps per provider (as `quiver status --json` prints them)."""
    rows: dict[str, dict[str, Any]] = {}
    for source, state in states.items():
        rows[source] = {"source": source, "day": state.day, "template": "",
                        "held": state.why if state.as_of == date else "", "caps": {}}
    for use in uses:
        row = rows.setdefault(use.source, {"source": use.source, "day": use.day,
                                           "template": "", "held": "", "caps": {}})
        row["day"] = max(row["day"], use.day)
        row["template"] = use.template
        row["caps"][use.provider] = {"taken": use.taken, "cap": use.cap}
    return [rows[name] for name in sorted(rows)]


def status_lines(rows: Sequence[Mapping[str, Any]], date: str) -> list[str]:
    if not rows:
        return [f"warm-up ({date} UTC): no warming source has sent today"]
    lines = [f"warm-up ({date} UTC): recipients taken of today's cap, per provider"]
    for row in rows:
        caps = row["caps"]
        used = ", ".join(
            f"{_provider(p)} {c['taken']}/{c['cap']}" + (" (used up)" if c["taken"] >= c["cap"]
                                                         else "")
            for p, c in sorted(caps.items())) or "nothing sent today"
        template = f" {row['template']}" if row["template"] else ""
        line = f"  {row['source']}: day {row['day']}{template}: {used}"
        if row["held"]:
            line += f"; held: {row['held']}"
        lines.append(line)
    return lines


def plan_lines(policy: WarmupPolicy, today: dt.date) -> list[str]:
    """What `quiver config check` says of each warming source."""
    lines = []
    for name, plan in sorted(policy.sources.items()):
        first = ", ".join(f"{p} {caps[0]}" for p, caps in sorted(plan.caps.items()))
        calendar = (today - plan.start).days + 1
        when = (f"starts in {1 - calendar} day(s)" if calendar < 1
                else f"calendar day {calendar} of {plan.days} (fewer if days held)"
                if calendar <= plan.days else "warm by the calendar (later if days held)")
        b = plan.bounds
        lines.append(
            f"warm-up: {name} on {plan.template} from {plan.start}, {when}; day 1 caps: "
            f"{first}; holds over {b.max_bounce_rate:.1%} bounces or "
            f"{b.max_deferral_rate:.1%} deferrals"
            + (f" or under {b.min_attempts} attempts" if b.min_attempts else ""))
    return lines


def _provider(key: str) -> str:
    return "no provider" if key == NO_PROVIDER else key
