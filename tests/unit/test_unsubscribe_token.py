"""Unsubscribe tokens: round trip, tampering, the key rotation window, hostile text."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.returnpath import RETIRED_GRACE, KeyRing, ReturnPathKey, rotated
from quiver.returnpath import token as rp_token
from quiver.unsubscribe import Refusal, Subject, UnsubscribeVerifier, Verified
from quiver.unsubscribe import token as token_mod
from quiver.unsubscribe.headers import UnsubscribeHeaders

T0 = 1_790_000_000.0
RING = rotated(None, now=T0 - 60, random_bytes=lambda n: b"k" * n)
labels = st.text(st.characters(codec="utf-8"), max_size=40)
subjects = st.builds(Subject, tenant=st.none() | labels, campaign=st.none() | labels,
                     message_id=st.text(min_size=1, max_size=128),
                     recipient=st.emails() | st.text(min_size=1, max_size=80))


def make(subject: Subject, ring: KeyRing = RING, now: float = T0) -> str:
    return UnsubscribeHeaders(ring, clock=lambda: now).token(subject)


@given(subjects)
def test_every_subject_round_trips(subject: Subject) -> None:
    text = make(subject)
    assert text.isascii() and all(c.isalnum() or c in "-_" for c in text)
    assert UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(text) == Verified(
        subject=subject, key_id=1)


def test_a_typical_token_is_short() -> None:
    text = make(Subject(tenant="acme", campaign="december-2026", message_id="msg-0123456789abcdef",
                        recipient="someone.long-name@example.org"))
    assert len(text) < 120


@settings(max_examples=300)
@given(subjects, st.data())
def test_any_edit_is_refused(subject: Subject, data: st.DataObject) -> None:
    text = make(subject)
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    edited = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    result = UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(edited)
    assert isinstance(result, Refusal)
    assert result.reason in ("malformed", "bad_hmac", "unknown_key")


@given(st.text(max_size=2000))
def test_arbitrary_text_is_refused_never_raises(text: str) -> None:
    result = UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(text)
    assert isinstance(result, Refusal)


@given(st.binary(max_size=1200))
def test_arbitrary_bytes_in_token_form_are_refused(raw: bytes) -> None:
    text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert isinstance(UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(text), Refusal)


def test_a_second_spelling_of_a_token_is_refused() -> None:
    text = make(Subject(tenant=None, campaign=None, message_id="m", recipient="a@b.example"))
    # base64url's last character carries spare bits when the length is not a multiple
    # of 3; setting them decodes to the same bytes, but is not the token's spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))) % 3 == 2
    other = alphabet[alphabet.index(text[-1]) + 1]
    assert base64.urlsafe_b64decode(text[:-1] + other + "=") == base64.urlsafe_b64decode(
        text + "=")
    refused = UnsubscribeVerifier(keys=RING, clock=lambda: T0).verify(text[:-1] + other)
    assert isinstance(refused, Refusal) and refused.reason == "malformed"


def test_rotation_old_key_verifies_through_the_grace_then_expires() -> None:
    subject = Subject(tenant="acme", campaign=None, message_id="m-1", recipient="a@b.example")
    old = make(subject)
    rotation = T0 + 86400
    ring = rotated(RING, now=rotation)
    new = make(subject, ring, now=rotation + 1)
    assert new != old
    for now in (rotation + 1, rotation + RETIRED_GRACE):
        verifier = UnsubscribeVerifier(keys=ring, clock=lambda now=now: now)
        assert verifier.verify(old) == Verified(subject=subject, key_id=1)
        assert verifier.verify(new) == Verified(subject=subject, key_id=2)
    late = UnsubscribeVerifier(keys=ring, clock=lambda: rotation + RETIRED_GRACE + 1)
    assert late.verify(old) == Refusal("expired_key", "key id 1")
    assert isinstance(late.verify(new), Verified)


def test_a_key_the_verifier_does_not_know_is_refused() -> None:
    text = make(Subject(tenant=None, campaign=None, message_id="m", recipient="a@b.example"),
                rotated(RING, now=T0))
    refused = UnsubscribeVerifier(keys=RING, clock=lambda: T0 + 1).verify(text)
    assert refused == Refusal("unknown_key", "key id 2")


def test_another_key_with_the_same_id_is_a_bad_hmac() -> None:
    subject = Subject(tenant=None, campaign=None, message_id="m", recipient="a@b.example")
    other = KeyRing([ReturnPathKey(id=1, secret=b"o" * 32, created=T0 - 60)])
    refused = UnsubscribeVerifier(keys=other, clock=lambda: T0).verify(make(subject))
    assert isinstance(refused, Refusal) and refused.reason == "bad_hmac"


def test_a_return_path_mac_never_passes_as_an_unsubscribe_mac() -> None:
    # The same keys sign both kinds of token, under different contexts.
    key = RING.signing(T0)
    signed = b"\x01\x00\x01" + b"x" * 12
    assert rp_token.mac(key.secret, signed, "") != token_mod.mac(key.secret, signed)[:10]


def test_none_and_empty_stay_apart() -> None:
    verifier = UnsubscribeVerifier(keys=RING, clock=lambda: T0)
    for tenant in (None, ""):
        subject = Subject(tenant=tenant, campaign=tenant, message_id="m", recipient="a@b.example")
        assert verifier.verify(make(subject)) == Verified(subject=subject, key_id=1)
