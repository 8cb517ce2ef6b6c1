"""The `[tenants.<name>]` policy sections and `tenant_may_send_from`: the most specific
listed domain decides whose an address is, so one tenant never sends as another's
domain; every refused value names its path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.policy.tenants import (
    TenantsPolicy,
    message_refusal,
    parse_tenants,
    tenant_may_send_from,
)

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""
TENANTS = """
[tenants.acme]
domains = ["acme.example", "Example.COM"]
max_connections = 20
max_messages_per_second = 200
iam_roles = ["arn:aws:iam::123456789012:role/acme-mailer"]
[tenants.shop]
domains = ["mail.example.com"]
"""


def tenants() -> TenantsPolicy:
    return parse_policy(BASE + TENANTS).tenants


def test_sections_parse_with_defaults_and_lower_case_domains() -> None:
    policy = tenants()
    acme, shop = policy.tenants["acme"], policy.tenants["shop"]
    assert acme.domains == ("acme.example", "example.com")
    assert (acme.max_connections, acme.max_messages_per_second) == (20, 200.0)
    assert acme.iam_roles == ("arn:aws:iam::123456789012:role/acme-mailer",)
    assert (shop.max_connections, shop.max_messages_per_second) == (50, 100.0)
    assert policy.tenants_of_role("arn:aws:iam::123456789012:role/acme-mailer") == ("acme",)
    assert parse_policy(BASE).tenants.tenants == {}


@pytest.mark.parametrize(("tenant", "address", "refused"), [
    ("acme", "a@acme.example", None),
    ("acme", "a@news.acme.example", None),
    ("acme", "a@ACME.example", None),
    ("acme", "a@example.com", None),
    ("acme", "a@x.example.com", None),
    # the more specific listing is shop's: acme owning the parent does not cover it
    ("acme", "a@mail.example.com", "'mail.example.com' is not a verified sending domain"),
    ("acme", "a@x.mail.example.com", "is not a verified sending domain of tenant 'acme'"),
    ("shop", "a@x.mail.example.com", None),
    ("shop", "a@example.com", "'example.com' is not a verified sending domain of tenant"),
    ("shop", "a@acme.example", "not a verified sending domain"),
    ("acme", "a@notacme.example", "not a verified sending domain"),
    ("acme", "a@acme.example.evil", "not a verified sending domain"),
    ("acme", "", "the null reverse-path"),
    ("acme", "no-at-sign", "invalid address: missing '@'"),
    ("nobody", "a@acme.example", "unknown tenant 'nobody'"),
])
def test_who_may_send_from_what(tenant: str, address: str, refused: str | None) -> None:
    reason = tenant_may_send_from(tenants(), tenant, address)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_a_message_is_checked_by_its_envelope_and_every_from_address() -> None:
    ok = b"From: A <a@acme.example>\r\nTo: b@x.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert message_refusal(tenants(), "acme", envelope_from="b@news.acme.example",
                           raw=ok) is None
    both = b"From: a@acme.example, c@mail.example.com\r\n\r\nbody\r\n"
    refusal = message_refusal(tenants(), "acme", envelope_from="a@acme.example", raw=both)
    assert refusal is not None and refusal[0] == "raw" and "mail.example.com" in refusal[1]
    refusal = message_refusal(tenants(), "acme", envelope_from="a@mail.example.com", raw=ok)
    assert refusal is not None and refusal[0] == "from"
    refusal = message_refusal(tenants(), "acme", envelope_from="a@acme.example",
                              raw=b"Subject: none\r\n\r\nx\r\n")
    assert refusal == ("raw", "the message has no From header")


@pytest.mark.parametrize(("section", "path", "reason"), [
    ('[tenants.a]\n', "tenants.a.domains", "required: a non-empty list"),
    ('[tenants.a]\ndomains = []\n', "tenants.a.domains", "required: a non-empty list"),
    ('[tenants.a]\ndomains = ["x"]\n', "tenants.a.domains[0]", "needs at least two labels"),
    ('[tenants.a]\ndomains = [7]\n', "tenants.a.domains[0]", "expected a domain name"),
    ('[tenants.a]\ndomains = ["a.test", "A.test"]\n', "tenants.a.domains[1]", "listed twice"),
    ('[tenants.a]\ndomains = ["a.test"]\n[tenants.b]\ndomains = ["a.test"]\n',
     "tenants.b.domains", "already listed for tenant 'a'"),
    ('[tenants.a]\ndomains = ["a.test"]\nmax_connections = 0\n',
     "tenants.a.max_connections", "expected a whole number 1-10000"),
    ('[tenants.a]\ndomains = ["a.test"]\nmax_connections = true\n',
     "tenants.a.max_connections", "expected a whole number"),
    ('[tenants.a]\ndomains = ["a.test"]\nmax_messages_per_second = 0\n',
     "tenants.a.max_messages_per_second", "expected a number above 0"),
    ('[tenants.a]\ndomains = ["a.test"]\niam_roles = ["arn:aws:iam::1:user/x"]\n',
     "tenants.a.iam_roles[0]", "expected an IAM role ARN"),
    ('[tenants.a]\ndomains = ["a.test"]\nlimit = 3\n', "tenants.a.limit", "unknown key"),
    ('[tenants."-a"]\ndomains = ["a.test"]\n', "tenants.-a", "a tenant name is"),
    ('[tenants]\na = 3\n', "tenants.a", "expected a table"),
])
def test_refused_values_name_their_path(section: str, path: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + section)
    assert any(p.startswith(f"{path}: ") and reason in p for p in info.value.problems), \
        info.value.problems


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(st.text(max_size=12), _values, max_size=4))
def test_any_table_parses_or_names_its_problems(table: dict[str, object]) -> None:
    problems: list[str] = []
    policy = parse_tenants(table, error=lambda path, message: problems.append(path))
    assert all(p.startswith("tenants.") for p in problems)
    if not problems:
        for tenant in policy.tenants.values():
            assert tenant.domains


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from(["acme", "shop", "other"]), st.text(max_size=40),
       st.sampled_from(["acme.example", "example.com", "mail.example.com", "x.test", ""]))
def test_an_address_has_one_owner_at_most(tenant: str, local: str, domain: str) -> None:
    policy = tenants()
    address = f"{local}@{domain}"
    allowed = [t for t in ("acme", "shop") if tenant_may_send_from(policy, t, address) is None]
    assert len(allowed) <= 1
    reason = tenant_may_send_from(policy, tenant, address)
    assert reason is None or isinstance(reason, str)
