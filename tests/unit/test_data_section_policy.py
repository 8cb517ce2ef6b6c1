"""The `[data]` policy section: the events retention's default, the README's example,
and the values it refuses (with the path, so the operator knows what to fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiver.policy import PolicyError, parse_policy
from quiver.policy.data import DEFAULT_EVENTS_RETENTION_DAYS

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Data policy\n"):]
    start = section.index("```toml\n") + len("```toml\n")
    return section[start:section.index("```", start)]


def test_default_is_400_days() -> None:
    assert parse_policy(BASE).data.events_retention_days == DEFAULT_EVENTS_RETENTION_DAYS == 400


def test_the_readme_section_parses_to_the_default() -> None:
    assert parse_policy(BASE + readme_section()).data.events_retention_days == 400


@pytest.mark.parametrize(("value", "days"), [
    ('"31d"', 31), ('"730d"', 730), ('"3650d"', 3650), ('"8760h"', 365), (str(90 * 86400), 90),
])
def test_accepted_retentions(value: str, days: int) -> None:
    policy = parse_policy(BASE + f"[data]\nevents_retention = {value}\n")
    assert policy.data.events_retention_days == days


@pytest.mark.parametrize(("value", "reason"), [
    ('"30d"', "between 31d and 3650d, got 30d"),
    ('"3651d"', "between 31d and 3650d, got 3651d"),
    ('"400.5d"', "whole number of days"),
    ('"36h"', "whole number of days"),
    ('"forever"', "expected a duration"),
    ("true", "expected a duration"),
    ("-5", "must not be negative"),
])
def test_refused_retentions(value: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + f"[data]\nevents_retention = {value}\n")
    (problem,) = info.value.problems
    assert problem.startswith("data.events_retention: ")
    assert reason in problem


def test_unknown_key_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + '[data]\nevent_retention = "400d"\n')
    assert info.value.problems == [
        "data.event_retention: unknown key (allowed: events_retention)"]
