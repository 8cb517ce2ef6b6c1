"""The `[guards]` policy section: defaults, overrides, precise errors, and (hypothesis)
that any section either loads or names the key that is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.policy.guards import GuardLimits, parse_guards
from quiver.policy.reload import merge_live, restart_digest

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def test_defaults() -> None:
    guards = parse_policy(BASE).guards
    assert guards.complaint_window == 86400 and guards.hard_bounce_window == 3600
    assert guards.defaults == GuardLimits(complaint_rate=0.003, hard_bounce_rate=0.05,
                                          min_volume=500, pause_for=None, enabled=True)
    assert guards.limits("tenant", "anyone") == guards.defaults


def test_overrides_start_from_the_section_defaults() -> None:
    guards = parse_policy(BASE + """
[guards]
complaint_rate = 0.002
min_volume = 100
pause_for = "6h"
[guards.tenants.acme]
complaint_rate = 0.001
[guards.campaigns.spring]
enabled = false
pause_for = "until-lifted"
""").guards
    acme = guards.limits("tenant", "acme")
    assert (acme.complaint_rate, acme.min_volume, acme.pause_for) == (0.001, 100, 21600.0)
    spring = guards.limits("campaign", "spring")
    assert (spring.enabled, spring.pause_for, spring.complaint_rate) == (False, None, 0.002)
    # A tenant and a campaign of the same name are told apart.
    assert guards.limits("campaign", "acme") == guards.defaults


@pytest.mark.parametrize(("body", "problem"), [
    ("complaint_rate = 0", "guards.complaint_rate: expected a fraction in (0, 1]"),
    ("complaint_rate = 1.5", "guards.complaint_rate: expected a fraction in (0, 1]"),
    ('hard_bounce_rate = "5%"', "guards.hard_bounce_rate: expected a fraction"),
    ("min_volume = 0", "guards.min_volume: expected an integer from 1"),
    ("min_volume = true", "guards.min_volume: expected an integer from 1"),
    ('complaint_window = "25m"', "guards.complaint_window: must be a whole number of 10"),
    ('hard_bounce_window = "30d"', "guards.hard_bounce_window: must be between"),
    ('pause_for = "1m"', "guards.pause_for: must be between 300s"),
    ('pause_for = "forever"', "guards.pause_for: expected a duration"),
    ('enabled = "yes"', "guards.enabled: expected true or false"),
    ("rate = 1", "guards.rate: unknown key"),
    ("tenants = 3", "guards.tenants: expected a table of names"),
    ("[guards.tenants.acme]\ncomplaint_window = \"1h\"",
     "guards.tenants.acme.complaint_window: unknown key"),
    ("[guards.campaigns.c]\ncomplaint_rate = -1",
     "guards.campaigns.c.complaint_rate: expected a fraction"),
])
def test_bad_values_are_named(body: str, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + "[guards]\n" + body + "\n")
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_a_change_is_live_and_rolls_no_sender() -> None:
    changed = BASE + "[guards]\ncomplaint_rate = 0.001\n"
    merged, change = merge_live(parse_policy(BASE), parse_policy(changed))
    assert change.applied == ("guards",) and not change.restart
    assert merged.guards.defaults.complaint_rate == 0.001
    assert restart_digest(BASE) == restart_digest(changed)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**8),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["24h", "10m", "1h", "25m", "until-lifted", "3d", "8d"]),
)
_KEYS = st.sampled_from(["complaint_rate", "hard_bounce_rate", "min_volume", "pause_for",
                         "enabled", "complaint_window", "hard_bounce_window", "bogus"])


@given(section=st.dictionaries(_KEYS, _VALUES, max_size=6),
       tenant=st.dictionaries(_KEYS, _VALUES, max_size=4))
def test_any_section_loads_or_names_its_key(section: dict[str, Any],
                                            tenant: dict[str, Any]) -> None:
    table = {k: v for k, v in section.items() if v is not None}
    table["tenants"] = {"t": {k: v for k, v in tenant.items() if v is not None}}
    problems: list[str] = []
    guards = parse_guards(table, error=lambda path, msg: problems.append(path))
    known = ({f"guards.{k}" for k in table}
             | {f"guards.tenants.t.{k}" for k in table["tenants"]["t"]})
    assert set(problems) <= known, (problems, json.dumps(table, default=str))
    if not problems:
        limits = guards.limits("tenant", "t")
        assert 0 < limits.complaint_rate <= 1 and 0 < limits.hard_bounce_rate <= 1
        assert limits.min_volume >= 1
        assert guards.complaint_window % 600 == 0


def test_the_readme_section_parses_as_it_says() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Tenant guards\n"):]
    start = section.index("```toml\n") + len("```toml\n")
    guards = parse_policy(BASE + section[start:section.index("```", start)]).guards
    assert guards.defaults == GuardLimits()
    assert guards.limits("tenant", "transactional").complaint_rate == 0.001
    assert not guards.limits("campaign", "reactivation-2026").enabled
