"""The `[controls]` policy section: defaults, the README's example, bounds, and that a
reload applies it live."""

from __future__ import annotations

from pathlib import Path

import pytest

from quiver.policy import PolicyError, parse_policy
from quiver.policy.reload import merge_live

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
    section = text[text.index("\n## Operator controls\n"):]
    start = section.index("```toml\n") + len("```toml\n")
    return section[start:section.index("```", start)]


def test_defaults() -> None:
    controls = parse_policy(BASE).controls
    assert (controls.poll, controls.recheck) == (2.0, 60.0)


def test_the_readme_section_parses_to_the_defaults() -> None:
    controls = parse_policy(BASE + readme_section()).controls
    assert (controls.poll, controls.recheck) == (2.0, 60.0)


@pytest.mark.parametrize(("body", "problem"), [
    ('poll = "10s"', "controls.poll: must be between 0.5s and 5s"),
    ('recheck = "1s"', "controls.recheck: must be between 5s and 900s"),
    ('recheck = "soon"', "controls.recheck: expected a duration"),
    ("pol = 1", "controls.pol: unknown key"),
])
def test_bad_values_are_named(body: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + "[controls]\n" + body + "\n")
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_a_reload_applies_it_live() -> None:
    current = parse_policy(BASE)
    merged, change = merge_live(current, parse_policy(BASE + '[controls]\nrecheck = "5m"\n'))
    assert "controls" in change.applied and merged.controls.recheck == 300.0
