"""The `[feedback]` policy section: defaults, what it accepts, and every problem by path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter, feedback_section

MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def test_absent_section_trusts_nobody_and_acts_on_complaints() -> None:
    policy = parse_policy(MINIMAL).feedback
    assert policy == FeedbackPolicy()
    assert policy.trusted_reporters == () and policy.act_on == ("abuse", "fraud")


def test_a_full_section() -> None:
    policy = parse_policy(MINIMAL + """
[feedback]
act_on = ["abuse", "fraud", "virus"]
own_domains = ["Example.COM.", "mail.example.org"]
trusted_reporters = [
  { domain = "yahoo.com" },
  { domain = "hotmail.com", require_dkim = false, user_agents = ["Hotmail FBL"] },
]
""").feedback
    assert policy == FeedbackPolicy(
        trusted_reporters=(
            TrustedReporter("yahoo.com", True, ()),
            TrustedReporter("hotmail.com", False, ("Hotmail FBL",)),
        ),
        act_on=("abuse", "fraud", "virus"),
        own_domains=("example.com", "mail.example.org"),
    )


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(MINIMAL + """
[feedback]
act_on = ["abuse", "spam"]
own_domains = ["localhost"]
trusted = 1
trusted_reporters = [
  { domain = "yahoo.com", require_dkim = "yes" },
  { domain = "yahoo.com" },
  { domain = "yahoo.com" },
  { domian = "aol.com" },
  { domain = "hotmail.com", user_agents = ["Hotmail FBL"] },
  { domain = "outlook.com", require_dkim = false, user_agents = [""] },
  "gmail.com",
]
""")
    assert info.value.problems == [
        "feedback.trusted: unknown key (allowed: act_on, addresses, own_domains, "
        "trusted_reporters)",
        "feedback.act_on[1]: unknown feedback type 'spam' (one of abuse, fraud, virus, "
        "other, not-spam, auth-failure)",
        'feedback.own_domains[0]: expected a domain name with a dot, like "yahoo.com", '
        "got 'localhost'",
        "feedback.trusted_reporters[0].require_dkim: expected true or false, got 'yes'",
        "feedback.trusted_reporters[2].domain: yahoo.com is listed twice; keep one entry "
        "per domain",
        "feedback.trusted_reporters[3].domian: unknown key (allowed: domain, require_dkim, "
        "user_agents)",
        'feedback.trusted_reporters[3].domain: required, a domain name like "yahoo.com"',
        "feedback.trusted_reporters[4].user_agents: only read when require_dkim = false (a "
        "verified signature already names the reporter); remove it or set require_dkim = "
        "false",
        "feedback.trusted_reporters[5].user_agents: expected a list of non-empty strings, "
        "got ['']",
        'feedback.trusted_reporters[6]: expected a table, like { domain = "yahoo.com" }',
    ]


@pytest.mark.parametrize(("text", "problem"), [
    ('feedback = "yes"', "feedback: expected a table, got str"),
    ("[feedback]\nact_on = []", "feedback.act_on: expected a non-empty list"),
    ('[feedback]\ntrusted_reporters = { domain = "yahoo.com" }',
     "feedback.trusted_reporters: expected an array of tables"),
    ('[feedback]\nown_domains = "example.com"', "feedback.own_domains: expected a list"),
])
def test_wrong_shapes(text: str, problem: str) -> None:
    # A bare key must come before the first table header to be a top-level key.
    document = MINIMAL + text if text.startswith("[") else text + "\n" + MINIMAL
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["domain", "require_dkim", "user_agents", "act_on",
                                       "own_domains", "trusted_reporters", "x"]), inner,
                      max_size=4),
    max_leaves=20,
))
def test_any_value_gives_a_policy_or_problems(raw: object) -> None:
    policy, problems = feedback_section(raw)
    assert isinstance(policy, FeedbackPolicy)
    assert all(p.startswith("feedback") for p in problems)
    if problems:
        assert policy == FeedbackPolicy()


def test_the_readme_snippet_is_a_valid_section() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (snippet,) = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]
                  if b.startswith("# feedback policy")]
    policy = parse_policy(MINIMAL + snippet).feedback
    assert policy.act_on == ("abuse", "fraud")
    assert policy.own_domains == ("example.com",)
    assert policy.addresses == ("fbl@fbl.example.com",)
    assert [e.domain for e in policy.trusted_reporters] == ["yahoo.com", "hotmail.com"]
    assert policy.trusted_reporters[1] == TrustedReporter("hotmail.com", False, ("Hotmail FBL",))
