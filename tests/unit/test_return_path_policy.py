"""Policy `[return_path]`: bounce domains per sending domain, aligned for DMARC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.policy.return_path import aligned

MINIMAL = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


def policy(section: str):
    return parse_policy(MINIMAL + section)


def problems(section: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        policy(section)
    return caught.value.problems


def test_without_the_section_nothing_is_rewritten() -> None:
    section = parse_policy(MINIMAL).return_path
    assert not section.enabled
    assert section.bounce_domain("example.com", tenant=None) is None


def test_a_bounce_domain_per_sending_domain_and_per_tenant() -> None:
    p = policy("""
[return_path]
key_secret = "quiver/return-path/keys"
[[return_path.domains]]
from = "Example.com."
bounce = "bounces.example.com"
[[return_path.domains]]
from = "example.com"
bounce = "rp.example.com"
tenant = "acme"
[[return_path.domains]]
from = "mail.example.org"
bounce = "bounces.example.org"
organizational_domain = "example.org"
""").return_path
    assert p.enabled and p.key_secret == "quiver/return-path/keys"
    assert p.bounce_domain("example.com", tenant=None) == "bounces.example.com"
    assert p.bounce_domain("example.com", tenant="globex") == "bounces.example.com"
    assert p.bounce_domain("example.com", tenant="acme") == "rp.example.com"
    assert p.bounce_domain("mail.example.org", tenant=None) == "bounces.example.org"
    assert p.bounce_domain("other.example", tenant=None) is None
    assert p.bounce_domains() == {"bounces.example.com": None,
                                  "rp.example.com": frozenset({"acme"}),
                                  "bounces.example.org": None}


def test_a_bounce_domain_not_aligned_with_the_sending_domain_is_refused() -> None:
    found = problems("""
[return_path]
key_file = "keys.json"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.net"
""")
    assert found == [
        "return_path.domains[0].bounce: bounces.example.net is not aligned with example.com "
        "(relaxed DMARC alignment: SPF on the return path would not count for DMARC); use "
        "bounces.example.com, or name the organizational domain both are under "
        "(organizational_domain)"]


def test_siblings_need_the_organizational_domain_and_it_must_hold_both() -> None:
    assert "not aligned" in problems("""
[return_path]
key_file = "k.json"
[[return_path.domains]]
from = "mail.example.com"
bounce = "bounces.example.com"
""")[0]
    assert problems("""
[return_path]
key_file = "k.json"
[[return_path.domains]]
from = "mail.example.com"
bounce = "bounces.example.net"
organizational_domain = "example.com"
""")[0].endswith("both must be under example.com")
    assert problems("""
[return_path]
key_file = "k.json"
[[return_path.domains]]
from = "mail.example.com"
bounce = "bounces.other.com"
organizational_domain = "com"
""") == ["return_path.domains[0].organizational_domain: com is a top-level domain, "
         "not an organizational domain"]


def test_keys_duplicates_and_unknown_fields_are_reported_with_their_paths() -> None:
    found = problems("""
[return_path]
colour = "blue"
[[return_path.domains]]
from = "example.com"
bounce = "b.example.com"
[[return_path.domains]]
from = "example.com"
bounce = "c.example.com"
[[return_path.domains]]
bounce = "not a domain"
tenants = ["x"]
""")
    assert "return_path.colour: unknown key (allowed: domains, key_file, key_secret)" in found
    assert "return_path.domains[1]: example.com has a bounce domain already" in found
    assert ("return_path.domains[2].tenants: unknown key (allowed: bounce, from, "
            "organizational_domain, tenant)") in found
    assert "return_path.domains[2].from: required: a domain name" in found
    assert any(p.startswith("return_path: set exactly one of key_secret") for p in found)


@settings(max_examples=200)
@given(labels=st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=2,
                       max_size=5), extra=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
def test_alignment_is_the_bounce_domain_under_the_from_domain(labels: list[str],
                                                               extra: str) -> None:
    from_domain = ".".join(labels)
    assert aligned(from_domain, from_domain)
    assert aligned(from_domain, f"{extra}.{from_domain}")
    # A look-alike that only ends with the same characters is not under it.
    assert not aligned(from_domain, f"{extra}{from_domain}")
    assert not aligned(f"{extra}.{from_domain}", from_domain)
    assert aligned(f"{extra}.{from_domain}", f"b.{from_domain}", organizational=from_domain)
