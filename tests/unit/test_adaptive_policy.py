"""The `[adaptive]` policy section: defaults, the starter file, precise errors naming the
rule and field, and that no TOML-ish value crashes the parser."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.policy.adaptive import adaptive_section, starter_rules

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[providers]
google = ["*.google.com"]
microsoft = ["*.outlook.com"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + text)
    return caught.value.problems


def test_defaults_enable_the_engine_with_the_starter_rules_of_defined_providers() -> None:
    adaptive = parse_policy(BASE).adaptive
    assert adaptive.enabled and adaptive.floor == 1.0 and adaptive.quiet == 60.0
    providers = {r.provider for r in adaptive.rules}
    # Only the providers this policy defines: a rule for apple could never match here.
    assert providers == {"google", "microsoft"}
    assert adaptive.rules_for("google")[0].name == "gmail-rate-limited"
    assert adaptive.rules_for("nobody") == ()


def test_the_shipped_policy_defines_or_offers_every_starter_provider() -> None:
    """google, yahoo and microsoft are defined; the other four are there to uncomment
    (each provider costs a deferral alarm per source in the service stack)."""
    from pathlib import Path
    text = Path("policy/quiver.toml").read_text()
    for name in ("apple", "comcast", "gmx", "orange"):
        text = text.replace(f"# {name} = ", f"{name} = ")
    policy = parse_policy(text)
    for provider in ("google", "yahoo", "microsoft", "apple", "comcast", "gmx", "orange"):
        assert provider in policy.providers
        assert policy.adaptive.rules_for(provider), provider


def test_a_policy_rule_comes_first_and_replaces_a_starter_rule_of_its_name() -> None:
    adaptive = parse_policy(BASE + """
[adaptive]
floor = "2/s"
step = 0.5
quiet = "30s"
factor = 0.6
[[adaptive.rules]]
name = "gmail-rate-limited"
provider = "google"
enhanced = "4.7.28"
window = "10s"
action = "reduce"
[[adaptive.rules]]
name = "any-block"
provider = "*"
text = "blocklisted"
window = "60s"
action = "suspend"
duration = "10m"
""").adaptive
    names = [r.name for r in adaptive.rules_for("google")]
    assert names.count("gmail-rate-limited") == 1 and names[0] == "gmail-rate-limited"
    assert names[-1] == "any-block"  # the `*` rules after the provider's own
    mine = adaptive.rules_for("google")[0]
    assert (mine.window, mine.threshold, mine.factor, mine.recovery) == (10.0, None, None, "step")
    assert (adaptive.floor, adaptive.step, adaptive.quiet, adaptive.factor) == (2.0, 0.5, 30.0, 0.6)
    assert [r.name for r in adaptive.rules_for("elsewhere")] == ["any-block"]


def test_starter_false_and_enabled_false() -> None:
    adaptive = parse_policy(BASE + "[adaptive]\nenabled = false\nstarter = false\n").adaptive
    assert not adaptive.enabled and adaptive.rules == ()


@pytest.mark.parametrize(("rule", "expected"), [
    ('name = "r1"\nwindow = "60s"\naction = "reduce"',
     "adaptive.rules[0] (r1): matches every reply; give code, enhanced or text"),
    ('name = "r1"\ncode = 421\naction = "reduce"',
     "adaptive.rules[0] (r1).window: required, a duration like \"60s\""),
    ('name = "r1"\ncode = 421\nwindow = "60s"',
     "adaptive.rules[0] (r1).action: required, one of reduce, suspend, suspend_tenant, "
     "suspend_campaign; got None"),
    ('name = "r1"\ncode = 421\nwindow = "60s"\naction = "suspend"',
     "adaptive.rules[0] (r1).duration: required, a duration like \"60s\""),
    ('name = "r1"\ncode = 421\nwindow = "60s"\naction = "reduce"\nfactor = 1.5',
     "adaptive.rules[0] (r1).factor: expected a number between 0 and 1 (exclusive) like 0.5, "
     "got 1.5"),
    ('name = "r1"\ncode = 421\nwindow = "60s"\naction = "reduce"\nthreshold = 0',
     "adaptive.rules[0] (r1).threshold: expected a share of attempts in (0, 1] like 0.05; "
     "leave it out for \"any match\"; got 0"),
    ('name = "r1"\ntext = "(unclosed"\nwindow = "60s"\naction = "reduce"',
     "adaptive.rules[0] (r1).text: not a valid regular expression"),
    ('name = "r1"\nprovider = "aol"\ncode = 421\nwindow = "60s"\naction = "reduce"',
     "adaptive.rules[0] (r1).provider: 'aol' is not a provider of [providers] "
     "(google, microsoft); or \"*\" for every destination"),
    ('name = "r1"\ncode = 250\nwindow = "60s"\naction = "reduce"',
     "adaptive.rules[0] (r1).code: expected a failure reply code 400-599"),
    ('name = "r1"\ncode = 421\nwindow = "60s"\naction = "suspend"\nduration = "1h"\n'
     'recovery = "step"',
     "adaptive.rules[0] (r1).recovery: for suspend, one of expire, floor; got 'step'"),
    ('name = "r1"\ncode = 421\nwindow = "2h"\naction = "reduce"',
     "adaptive.rules[0] (r1).window: must be between 1s and 3600s"),
    ('name = "R 1"\ncode = 421\nwindow = "60s"\naction = "reduce"',
     "adaptive.rules[0].name: required"),
])
def test_a_broken_rule_is_named_with_its_field(rule: str, expected: str) -> None:
    found = problems("[[adaptive.rules]]\n" + rule + "\n")
    assert any(p.startswith(expected) for p in found), found


def test_section_errors() -> None:
    found = problems('[adaptive]\nenabled = "yes"\nfloor = "fast"\ncolour = 1\n')
    assert "adaptive.enabled: expected true or false, got 'yes'" in found
    assert any(p.startswith("adaptive.floor: expected a rate") for p in found)
    assert any(p.startswith("adaptive.colour: unknown key") for p in found)


def test_a_name_used_twice() -> None:
    rule = '[[adaptive.rules]]\nname = "r1"\ncode = 421\nwindow = "60s"\naction = "reduce"\n'
    assert "adaptive.rules[1].name: 'r1' is used twice" in problems(rule + rule)


def test_the_starter_file_parses() -> None:
    rules = starter_rules()
    assert len(rules) >= 19
    assert {r.provider for r in rules} == {"google", "yahoo", "microsoft", "apple", "comcast",
                                           "gmx", "orange"}


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.sampled_from(["60s", "1h", "421", "4.7.28", "reduce",
                                              "suspend", "google", "*", "(", "step", "2/s"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12)
rule_keys = st.sampled_from(["name", "provider", "code", "enhanced", "text", "window",
                             "threshold", "min_attempts", "action", "factor", "duration",
                             "recovery", "other"])


@settings(max_examples=300, deadline=None)
@given(section=st.dictionaries(
    st.sampled_from(["enabled", "floor", "step", "quiet", "factor", "starter", "rules", "x"]),
    toml_values, max_size=6),
    rules=st.lists(st.dictionaries(rule_keys, toml_values, max_size=12), max_size=3))
def test_any_section_is_a_policy_or_a_list_of_problems(section: dict[str, Any],
                                                       rules: list[dict[str, Any]]) -> None:
    if rules:
        section = {**section, "rules": rules}
    policy, found = adaptive_section(section, providers={"google"})
    assert all(isinstance(p, str) and p.startswith("adaptive") for p in found)
    if not found:
        assert all(r.provider in ("google", "*") for r in policy.rules)


def test_config_check_says_what_the_engine_will_do() -> None:
    from quiver.cli import adaptive_summary
    summary = adaptive_summary(parse_policy(BASE + """
[[throttles]]
source = "*"
provider = "google"
max_rate = "300/s"
"""))
    assert summary.startswith("adaptive: on, 8 response rules (0 from this policy, 8 starter): "
                              "google 4, microsoft 4")
    assert "no throttle sets max_rate for microsoft" in summary
    assert adaptive_summary(parse_policy(BASE + "[adaptive]\nenabled = false\n")) == \
        "adaptive: off ([adaptive] enabled = false)"


def test_the_readme_section_parses_and_replaces_two_starter_rules() -> None:
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Adaptive deliverability\n"):]
    start = section.index("```toml\n") + len("```toml\n")
    adaptive = parse_policy(BASE + section[start:section.index("```", start)]).adaptive
    assert adaptive.enabled and (adaptive.floor, adaptive.step, adaptive.quiet) == (1, 1, 60)
    names = [r.name for r in adaptive.rules]
    assert names[:2] == ["gmail-rate-limited", "outlook-blocklisted"]
    assert len(names) == len(set(names)) == 8  # the starter's versions were replaced
