"""What `quiver status` and `quiver config check` say of warming sources."""

from __future__ import annotations

import datetime as dt

from quiver.policy import parse_policy
from quiver.storage.warmup import CapUse, DayState
from quiver.warmup.describe import plan_lines, status_lines, status_rows

DATE = "2026-12-05"


def test_status_shows_day_caps_used_and_why_held() -> None:
    uses = [CapUse("ip1", "gmail", DATE, taken=50, cap=50, day=1, template="standard"),
            CapUse("ip1", "-", DATE, taken=12, cap=50, day=1, template="standard")]
    states = {"ip2": DayState(day=3, as_of=DATE, why="bounce rate 9.0% (9 of 100) over 3.0%"),
              "ip3": DayState(day=5, as_of="2026-12-04")}
    rows = status_rows(uses, states, DATE)
    assert status_lines(rows, DATE) == [
        "warm-up (2026-12-05 UTC): recipients taken of today's cap, per provider",
        "  ip1: day 1 standard: no provider 12/50, gmail 50/50 (used up)",
        "  ip2: day 3: nothing sent today; held: bounce rate 9.0% (9 of 100) over 3.0%",
        "  ip3: day 5: nothing sent today",
    ]
    assert status_lines([], DATE) == ["warm-up (2026-12-05 UTC): no warming source has "
                                      "sent today"]


def test_config_check_describes_each_plan() -> None:
    policy = parse_policy("""
default_pool = "p"
[sources.a]
ip = "192.0.2.1"
ehlo = "a.example.com"
[pools.p]
sources = ["a"]
[warmup.a]
template = "aggressive"
start = "2026-12-01"
min_attempts = 100
""")
    assert plan_lines(policy.warmup, dt.date(2026, 12, 5)) == [
        "warm-up: a on aggressive from 2026-12-01, calendar day 5 of 10 (fewer if days "
        "held); day 1 caps: default 200, gmail 100; holds over 3.0% bounces or 20.0% "
        "deferrals or under 100 attempts"]
    assert "starts in 2 day(s)" in plan_lines(policy.warmup, dt.date(2026, 11, 29))[0]
    assert "warm by the calendar" in plan_lines(policy.warmup, dt.date(2027, 1, 29))[0]
