"""Bounce classification over any reply: a permanent enhanced status is always decided."""

from __future__ import annotations

import tomllib
from importlib import resources

from hypothesis import given
from hypothesis import strategies as st

from quiver.bounce.classify import KINDS, default_classifier

# The soft reasons quiver/data/bounce_rules.toml names (a later campaign may reach the
# address): everything else permanent is hard (the address) or block (the receiver).
RULES = tomllib.loads(
    resources.files("quiver").joinpath("data/bounce_rules.toml").read_text("utf-8"))
SOFT = {rule["category"] for rule in RULES["rules"] if rule["kind"] == "soft"}

# RFC 3463 X.1-X.7 as assigned, then any subject and detail of one to three digits.
KNOWN_5XX = st.sampled_from([
    "5.0.0", "5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.4", "5.1.5", "5.1.6", "5.1.7", "5.1.8",
    "5.1.10", "5.2.0", "5.2.1", "5.2.2", "5.2.3", "5.2.4", "5.3.0", "5.3.1", "5.3.2",
    "5.3.3", "5.3.4", "5.3.5", "5.4.0", "5.4.1", "5.4.2", "5.4.3", "5.4.4", "5.4.6",
    "5.4.7", "5.5.0", "5.5.1", "5.5.2", "5.5.3", "5.5.4", "5.5.5", "5.6.0", "5.6.1",
    "5.6.3", "5.6.7", "5.7.0", "5.7.1", "5.7.8", "5.7.23", "5.7.26", "5.7.27",
])
ANY_5XX = st.builds(lambda subject, detail: f"5.{subject}.{detail}",
                    st.integers(0, 999), st.integers(0, 999))
# Reply texts: arbitrary, and the phrases the rules look for, in any company.
PHRASES = st.sampled_from(["user unknown", "mailbox full", "blocked", "spam", "try again later",
                           "Spamhaus", "over quota", "no such user", "policy", "too many",
                           "Sender address rejected: Domain not found", ""])
TEXT = st.one_of(st.text(max_size=300),
                 st.tuples(st.text(max_size=40), PHRASES, st.text(max_size=40)).map("".join))


@given(code=st.integers(500, 599), enhanced=KNOWN_5XX | ANY_5XX, text=TEXT)
def test_a_permanent_enhanced_status_is_never_undetermined(code: int, enhanced: str,
                                                           text: str) -> None:
    c = default_classifier().classify(code=code, enhanced=enhanced, text=text)
    assert c.kind in ("hard", "block", "soft"), (enhanced, text, c)
    if c.kind == "soft":
        assert c.category in SOFT, (enhanced, text, c)
    assert c.reason.startswith(f"{code} {enhanced}")


@given(code=st.integers(400, 599), enhanced=st.none() | st.text(max_size=12), text=TEXT)
def test_any_reply_is_classified_without_crashing(code: int, enhanced: str | None,
                                                  text: str) -> None:
    c = default_classifier().classify(code=code, enhanced=enhanced, text=text)
    assert c.kind in KINDS and c.category
    assert c.as_event() == {"kind": c.kind, "category": c.category, "reason": c.reason}


@given(code=st.integers(500, 599), detail=st.integers(0, 999), text=TEXT)
def test_a_refusal_of_our_own_sender_is_never_blamed_on_the_recipient(
        code: int, detail: int, text: str) -> None:
    for enhanced in ("5.1.7", "5.1.8", f"5.7.{detail}"):
        c = default_classifier().classify(code=code, enhanced=enhanced, text=text)
        assert c.kind == "block", (enhanced, text, c)
