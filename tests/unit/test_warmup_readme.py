"""The README's warm-up snippets hold: its policy section loads and means what the text
says, and its status lines are what `quiver status` prints for those counts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from quiver.policy import parse_policy
from quiver.storage.warmup import CapUse, DayState
from quiver.warmup.describe import status_lines, status_rows

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MINIMAL = """
default_pool = "p"
[providers]
gmail = ["*.google.com"]
[sources.local1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["local1"]
"""


def blocks(lang: str, marker: str) -> list[str]:
    out, current, info = [], None, ""
    for line in README.splitlines():
        if current is None and line.startswith("```"):
            current, info = [], line[3:].strip()
        elif current is not None and line.strip() == "```":
            if info == lang and marker in "\n".join(current):
                out.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return out


def test_the_policy_snippet_loads_as_described() -> None:
    (snippet,) = blocks("toml", "# warm-up policy")
    plan = parse_policy(MINIMAL + snippet).warmup.sources["local1"]
    assert (plan.template, plan.start) == ("standard", dt.date(2026, 12, 1))
    assert plan.bounds.max_bounce_rate == 0.02 and plan.bounds.max_deferral_rate == 0.2
    assert [plan.cap("gmail", d) for d in (1, 3, 4)] == [20, 100, None]
    assert plan.cap(None, 1) == 50 and plan.days == 16


def test_the_status_snippet_is_what_status_prints() -> None:
    (shown,) = blocks("", "recipients taken of today's cap")
    date = "2026-12-05"
    rows = status_rows(
        [CapUse("local1", "quiver-local", date, taken=50, cap=50, day=1, template="standard")],
        {"ip9": DayState(day=3, as_of=date, why="bounce rate 9.0% (9 of 100) over 3.0%")},
        date)
    assert status_lines(rows, date) == shown.strip("\n").splitlines()
