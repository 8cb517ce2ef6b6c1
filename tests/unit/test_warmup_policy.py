"""The [warmup] policy section and the shipped templates: what parses, and the precise
error each broken piece gets (hypothesis: any value in any key is an error or a plan,
never an exception)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, build_policy, parse_policy
from quiver.policy.warmup import DEFAULT_PROVIDER, WarmupBounds, templates

BASE = """
default_pool = "p"
[providers]
gmail = ["*.google.com"]
other = ["*.example.net"]
[sources.a]
ip = "192.0.2.1"
ehlo = "a.example.com"
[sources.b]
ip = "192.0.2.2"
ehlo = "b.example.com"
[pools.p]
sources = ["a", "b"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        parse_policy(BASE + text)
    return err.value.problems


def test_shipped_templates_have_a_default_and_grow() -> None:
    shipped = templates()
    assert set(shipped) == {"standard", "conservative", "aggressive"}
    lengths = {name: max(len(c) for c in caps.values()) for name, caps in shipped.items()}
    assert lengths["aggressive"] < lengths["standard"] < lengths["conservative"]
    assert 14 <= lengths["standard"] <= 18 and lengths["conservative"] >= 30
    for caps in shipped.values():
        assert DEFAULT_PROVIDER in caps
        for days in caps.values():
            assert list(days) == sorted(days), "a ramp never shrinks from one day to the next"
    assert shipped["standard"]["default"][:4] == (50, 100, 500, 1000)


def test_a_warmup_table_and_a_source_key_both_declare_a_plan() -> None:
    policy = parse_policy(BASE.replace(
        'ehlo = "b.example.com"',
        'ehlo = "b.example.com"\nwarmup = {template = "conservative", start = 2026-12-03}') + """
[warmup]
max_deferral_rate = 0.1
[warmup.a]
template = "standard"
start = "2026-12-01"
max_bounce_rate = 0.02
caps = { gmail = [10, 20] }
""")
    a, b = policy.warmup.sources["a"], policy.warmup.sources["b"]
    assert (a.template, a.start) == ("standard", dt.date(2026, 12, 1))
    assert a.bounds == WarmupBounds(max_bounce_rate=0.02, max_deferral_rate=0.1)
    assert b.bounds == WarmupBounds(max_deferral_rate=0.1)
    assert (b.template, b.start) == ("conservative", dt.date(2026, 12, 3))
    # The override replaces the template's list for that provider only.
    assert [a.cap("gmail", d) for d in (1, 2, 3)] == [10, 20, None]
    assert a.cap("other", 1) == 50 and a.cap(None, 2) == 100
    assert a.cap("yahoo", 16) == templates()["standard"]["yahoo"][15]
    assert a.cap("other", 17) is None and a.days == 16
    assert b.cap("gmail", 1) == 20  # conservative has only a default list


def test_no_warmup_section_means_no_warming_source() -> None:
    assert not parse_policy(BASE).warmup.enabled


@pytest.mark.parametrize(("fragment", "expected"), [
    ('[warmup.a]\nstart = "2026-12-01"', "warmup.a.template: expected one of aggressive, "
                                         "conservative, standard, got None"),
    ('[warmup.a]\ntemplate = "fast"\nstart = "2026-12-01"', "warmup.a.template: expected one"),
    ('[warmup.a]\ntemplate = "standard"', "warmup.a.start: expected the warm-up's first day"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "12/01/2026"', "warmup.a.start: expected"),
    ('[warmup.a]\ntemplate = "standard"\nstart = 2026-12-01T10:00:00Z', "warmup.a.start:"),
    ('[warmup.zz]\ntemplate = "standard"\nstart = "2026-12-01"', "warmup.zz: unknown source 'zz'"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "2026-12-01"\nspeed = 2',
     "warmup.a.speed: unknown key"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "2026-12-01"\ncaps = { yahoo = [1] }',
     "warmup.a.caps.yahoo: unknown provider 'yahoo'"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "2026-12-01"\ncaps = { gmail = [0, 5] }',
     "warmup.a.caps.gmail: expected a list of 1-366 daily caps"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "2026-12-01"\ncaps = { gmail = [] }',
     "warmup.a.caps.gmail: expected a list"),
    ('[warmup.a]\ntemplate = "standard"\nstart = "2026-12-01"\nmax_bounce_rate = 5',
     "warmup.a.max_bounce_rate: expected a fraction 0-1 (0.05 is 5 %), got 5"),
    ("[warmup]\nmin_attempts = -1", "warmup.min_attempts: expected a whole number >= 0"),
    ("[warmup]\nmax_deferral_rate = true", "warmup.max_deferral_rate: expected a fraction"),
    ("[warmup]\nstart = 3", "warmup.start: unknown key (allowed: max_bounce_rate, "
                            "max_deferral_rate, min_attempts, or a table per warming source)"),
])
def test_broken_warmup_gets_a_precise_error(fragment: str, expected: str) -> None:
    found = problems(fragment)
    assert any(p.startswith(expected) for p in found), found


def test_a_warmup_that_is_no_table_is_refused() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("warmup = 3\n" + BASE)
    assert err.value.problems == ["warmup: expected a table, got int"]


def test_a_plan_in_both_places_is_refused() -> None:
    text = BASE.replace('ehlo = "b.example.com"',
                        'ehlo = "b.example.com"\nwarmup = {template = "standard", '
                        'start = "2026-12-01"}')
    with pytest.raises(PolicyError) as err:
        parse_policy(text + '[warmup.b]\ntemplate = "standard"\nstart = "2026-12-01"\n')
    assert err.value.problems == ["sources.b.warmup: set in [warmup.b] as well: keep one"]


values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**9), st.floats(allow_nan=False),
    st.text(max_size=12), st.dates().map(str), st.dates(),
    st.lists(st.integers(-3, 10**9), max_size=5),
    st.dictionaries(st.sampled_from(["gmail", "default", "yahoo", "x"]),
                    st.lists(st.integers(-3, 10**9), max_size=4), max_size=3),
)
plan = st.dictionaries(
    st.sampled_from(["template", "start", "caps", "max_bounce_rate", "max_deferral_rate",
                     "min_attempts", "other"]),
    st.one_of(values, st.sampled_from(["standard", "aggressive", "2026-12-01"])), max_size=7)


@settings(max_examples=300, deadline=None)
@given(section=st.dictionaries(
    st.sampled_from(["a", "b", "zz", "max_bounce_rate", "min_attempts", "odd"]),
    st.one_of(plan, values), max_size=4))
def test_any_warmup_section_parses_or_names_its_problems(section: dict[str, Any]) -> None:
    data = tomli_w.dumps({"warmup": section}) if _toml_safe(section) else None
    if data is None:
        return
    import tomllib
    base = tomllib.loads(BASE)
    try:
        policy = build_policy({**base, **tomllib.loads(data)})
    except PolicyError as exc:
        assert exc.problems and all(p.startswith("warmup") for p in exc.problems)
        return
    for name, source in policy.warmup.sources.items():
        assert name in ("a", "b")
        assert source.days >= 1 and source.cap(None, 1) is not None


def _toml_safe(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return all(_toml_safe(v) for v in value.values())
    if isinstance(value, list):
        return all(_toml_safe(v) for v in value)
    return True
