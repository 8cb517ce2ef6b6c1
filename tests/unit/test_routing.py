"""Destination guard, provider matching, weighted source choice, reply parsing, bounces."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.bounce import default_classifier
from quiver.policy import parse_policy
from quiver.routing.providers import ProviderMatcher
from quiver.routing.safety import DestinationGuard
from quiver.routing.sources import NoSourceAvailable, SourcePicker
from quiver.smtp.reply import MAX_TEXT, parse_reply


@pytest.mark.parametrize("ip", ["10.0.0.1", "127.0.0.1", "169.254.169.254", "172.16.5.4",
                                "192.168.1.1", "100.64.0.1", "0.0.0.0", "::1", "fe80::1",
                                "fd00::5", "::ffff:10.0.0.1", "224.0.0.1", "fd00:ec2::254"])
def test_guard_refuses_internal_addresses(ip: str) -> None:
    assert DestinationGuard().reason(ip) is not None


@pytest.mark.parametrize("ip", ["198.51.100.7", "142.250.1.27", "2607:f8b0:4004:c07::1a"])
def test_guard_allows_public_addresses(ip: str) -> None:
    assert DestinationGuard().reason(ip) is None


def test_guard_allow_list_is_exact() -> None:
    guard = DestinationGuard(["127.0.0.0/30"])
    assert guard.reason("127.0.0.2") is None
    assert guard.reason("127.0.0.9") is not None
    assert guard.reason("10.0.0.1") is not None


def test_provider_patterns() -> None:
    m = ProviderMatcher({"google": ["*.google.com", "*.googlemail.com"],
                         "microsoft": ["*.outlook.com"]})
    assert m.match(["aspmx.l.google.com", "alt1.aspmx.l.google.com"]) == "google"
    assert m.match(["example-com.mail.protection.outlook.com"]) == "microsoft"
    assert m.match(["mx.example.org"]) is None
    assert m.match(["google.com"]) is None  # "*.google.com" needs a label before


async def test_weighted_round_robin_is_smooth_and_skips_down_sources() -> None:
    policy = parse_policy("""
default_pool = "p"
[sources.a]
ip = "192.0.2.1"
ehlo = "a.example.com"
[sources.b]
ip = "192.0.2.2"
ehlo = "b.example.com"
[sources.c]
ip = "192.0.2.3"
ehlo = "c.example.com"
[pools.p]
sources = { a = 3, b = 1, c = 1 }
""")
    picker = SourcePicker(policy)
    picks = [(await picker.pick("p")).name for _ in range(500)]
    assert Counter(picks) == {"a": 300, "b": 100, "c": 100}
    assert "aaa" not in "".join(picks[:5])  # interleaved, not runs
    picker.mark_down("a")
    assert {(await picker.pick("p")).name for _ in range(10)} == {"b", "c"}
    picker.mark_down("b")
    picker.mark_down("c")
    with pytest.raises(NoSourceAvailable, match="every source of pool 'p' is down"):
        await picker.pick("p")
    picker.mark_up("b")
    assert (await picker.pick("p")).name == "b"


def test_reply_parsing() -> None:
    r = parse_reply(550, "5.1.1 <x@example.org>: Recipient address rejected")
    assert (r.code, r.enhanced, r.permanent) == (550, "5.1.1", True)
    assert r.text.startswith("<x@example.org>")
    assert parse_reply(451, "Greylisted, try later").enhanced is None
    assert parse_reply(250, "5.0.0 mismatched class").enhanced is None
    assert "\n" not in parse_reply(550, "5.7.1 a\r\nforged: line\x00").text


@given(st.integers(200, 599), st.text(max_size=2000))
def test_reply_parsing_never_crashes_and_is_bounded(code: int, text: str) -> None:
    r = parse_reply(code, text)
    assert len(r.text) <= MAX_TEXT
    assert not any(ord(c) < 32 for c in r.text)


@pytest.mark.parametrize(("code", "enhanced", "text", "kind", "category"), [
    (550, "5.1.1", "user unknown", "hard", "bad-mailbox"),
    (550, None, "No such user here", "hard", "bad-mailbox"),
    (550, "5.1.10", "null MX", "hard", "no-domain"),
    (552, "5.2.2", "Mailbox full", "soft", "mailbox-full"),
    (554, "5.7.1", "Service unavailable; client host blocked using Spamhaus", "block",
     "reputation"),
    (550, "5.7.26", "unauthenticated email is not accepted", "block", "authentication"),
    (554, "5.7.1", "policy violation", "block", "policy"),
    (550, "5.0.0", "something odd", "block", "policy"),
    (550, None, "something odd", "undetermined", "other"),
])
def test_bounce_classification(code, enhanced, text, kind, category) -> None:
    c = default_classifier().classify(code=code, enhanced=enhanced, text=text)
    assert (c.kind, c.category) == (kind, category)
    assert str(code) in c.reason
