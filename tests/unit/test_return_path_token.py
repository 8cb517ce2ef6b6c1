"""Return-path tokens: round trip, tampering, case folding, key rotation, refusals."""

from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.returnpath import (
    RETIRED_GRACE,
    KeyRing,
    KeyRingError,
    Refusal,
    ReturnPathKey,
    ReturnPaths,
    ReturnPathVerifier,
    Verified,
    dump_key_ring,
    parse_key_ring,
    rotated,
)
from quiver.returnpath import token as token_mod
from quiver.storage.base import ReturnPathRecord
from quiver.storage.memory import MemoryReturnPaths

T0 = 1_790_000_000.0
DAY = 86400.0
BOUNCE = "bounces.example.com"
B32 = "abcdefghijklmnopqrstuvwxyz234567"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fixed_bytes(seed: int):
    return lambda n: bytes([seed]) * n


def rig(*, domains=None, clock=None):
    clock = clock or Clock()
    ring = rotated(None, now=T0 - DAY, random_bytes=fixed_bytes(7))
    store = MemoryReturnPaths(clock=clock)
    paths = ReturnPaths(ring, clock=clock)
    verifier = ReturnPathVerifier(keys=lambda: paths.ring, store=store,
                                  bounce_domains=domains or {BOUNCE: None}, clock=clock)
    return paths, store, verifier, clock


def make(paths, store, *, message_id="m-1", recipient="Bob@example.org", tenant=None,
         campaign=None, bounce=BOUNCE) -> str:
    address, record = paths.address(bounce_domain=bounce, message_id=message_id,
                                    recipient=recipient, tenant=tenant, campaign=campaign)
    asyncio.run(store.put([record]))
    return address


message_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)
local_parts = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-.",
                      min_size=1, max_size=64)
domains = st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){1,3}", fullmatch=True)
recipients = st.builds(lambda lp, d: f"{lp}@{d}", local_parts, domains)
labels = st.none() | st.text(min_size=0, max_size=128)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_id=message_ids, recipient=recipients, tenant=labels, campaign=labels)
def test_any_valid_message_recipient_tenant_and_campaign_round_trip(
        message_id: str, recipient: str, tenant: str | None, campaign: str | None) -> None:
    paths, store, verifier, _ = rig()
    address = make(paths, store, message_id=message_id, recipient=recipient, tenant=tenant,
                   campaign=campaign)
    local, _, domain = address.partition("@")
    assert domain == BOUNCE
    assert local.startswith("b-") and len(local) == token_mod.LOCAL_PART_CHARS <= 64
    assert set(local[2:]) <= set(B32)
    assert verifier.verify(address) == Verified(
        message_id=message_id, recipient=recipient, tenant=tenant, campaign=campaign,
        key_id=1, bounce_domain=BOUNCE)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_edited_character_of_the_token_is_refused(data: st.DataObject) -> None:
    paths, store, verifier, _ = rig()
    address = make(paths, store)
    local, _, domain = address.partition("@")
    i = data.draw(st.integers(2, len(local) - 1))
    other = data.draw(st.sampled_from([c for c in B32 if c != local[i]]))
    tampered = f"{local[:i]}{other}{local[i + 1:]}@{domain}"
    result = verifier.verify(tampered)
    assert isinstance(result, Refusal)
    assert result.reason in ("bad_hmac", "unknown_key", "malformed")


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.booleans(), min_size=42, max_size=42), upper_domain=st.booleans())
def test_case_folding_anywhere_in_the_address_still_verifies(
        flips: list[bool], upper_domain: bool) -> None:
    paths, store, verifier, _ = rig()
    address = make(paths, store, recipient="MiXeD.Case@Example.org")
    local, _, domain = address.partition("@")
    folded = "".join(c.upper() if f else c for c, f in zip(local, flips, strict=True))
    result = verifier.verify(f"{folded}@{domain.upper() if upper_domain else domain}")
    assert isinstance(result, Verified)
    # The recipient comes back exactly as it was sent, its case kept.
    assert result.recipient == "MiXeD.Case@Example.org"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_is_verified_or_refused_never_an_exception(text: str) -> None:
    _, _, verifier, _ = rig()
    assert isinstance(verifier.verify(text), Refusal)
    assert isinstance(verifier.verify(f"b-{text}@{BOUNCE}"), Refusal)


def test_the_token_is_moved_to_another_bounce_domain_refused() -> None:
    paths, store, verifier, _ = rig(domains={BOUNCE: None, "bounces.other.org": None})
    address = make(paths, store)
    moved = address.replace(BOUNCE, "bounces.other.org")
    assert verifier.verify(moved) == Refusal("bad_hmac", "key id 1")


def test_a_domain_that_is_not_a_bounce_domain_is_wrong_domain() -> None:
    paths, store, verifier, _ = rig()
    address = make(paths, store)
    result = verifier.verify(address.replace(BOUNCE, "example.net"))
    assert isinstance(result, Refusal) and result.reason == "wrong_domain"


def test_not_an_address_or_not_a_token_is_malformed() -> None:
    _, _, verifier, _ = rig()
    for text in ("", "@", "nobody", f"@{BOUNCE}", f"postmaster@{BOUNCE}",
                 f"b-{'a' * 40}@{BOUNCE}", f"b-{'a' * 39}8@{BOUNCE}"):
        result = verifier.verify(text)
        assert isinstance(result, Refusal) and result.reason == "malformed", text


def test_a_key_id_the_ring_does_not_have_is_unknown_key() -> None:
    paths, store, _, clock = rig()
    address = make(paths, store)
    other = KeyRing([ReturnPathKey(id=9, secret=b"k" * 32, created=T0 - DAY)])
    verifier = ReturnPathVerifier(keys=other, store=store, bounce_domains={BOUNCE: None},
                                  clock=clock)
    assert verifier.verify(address) == Refusal("unknown_key", "key id 1")


def test_a_signed_token_the_store_does_not_know_is_unknown_message() -> None:
    paths, _, verifier, _ = rig()
    address, _ = paths.address(bounce_domain=BOUNCE, message_id="m", recipient="a@b.example",
                               tenant=None, campaign=None)
    result = verifier.verify(address)
    assert isinstance(result, Refusal) and result.reason == "unknown_message"


def test_a_stored_record_that_does_not_hash_to_the_reference_is_a_mismatch() -> None:
    paths, store, verifier, _ = rig()
    address, record = paths.address(bounce_domain=BOUNCE, message_id="m",
                                    recipient="a@b.example", tenant="t1", campaign=None)
    poisoned = ReturnPathRecord(reference=record.reference, message_id="m",
                                recipient="a@b.example", tenant="t2")
    asyncio.run(store.put([poisoned]))
    result = verifier.verify(address)
    assert isinstance(result, Refusal) and result.reason == "mismatch"


def test_a_tenant_that_does_not_use_the_bounce_domain_is_other_tenant() -> None:
    paths, store, verifier, _ = rig(domains={BOUNCE: frozenset({"acme"})})
    mine = make(paths, store, tenant="acme", message_id="m-a")
    theirs = make(paths, store, tenant="globex", message_id="m-g")
    assert isinstance(verifier.verify(mine), Verified)
    assert verifier.verify(theirs) == Refusal(
        "other_tenant", f"tenant 'globex' does not use {BOUNCE}")


def test_stored_references_lapse() -> None:
    paths, store, verifier, clock = rig()
    address = make(paths, store)
    clock.now += 46 * DAY
    result = verifier.verify(address)
    assert isinstance(result, Refusal) and result.reason == "unknown_message"


@pytest.mark.parametrize(("days", "verifies"), [(29, True), (30, True), (31, False)])
def test_a_retired_key_verifies_for_30_days_after_retirement(days: int, verifies: bool) -> None:
    paths, store, verifier, clock = rig()
    old = make(paths, store)
    paths.ring = rotated(paths.ring, now=clock.now, random_bytes=fixed_bytes(9))
    retired_at = clock.now
    new = make(paths, store, message_id="m-2")
    assert token_mod.decode(new.partition("@")[0]).key_id == 2  # type: ignore[union-attr]
    # Stored references are refreshed on every attempt; keep them alive here.
    clock.now = retired_at + days * DAY
    asyncio.run(store.put([r for r, _ in store.records.values()]))
    result = verifier.verify(old)
    if verifies:
        assert isinstance(result, Verified) and result.key_id == 1
    else:
        assert result == Refusal("expired_key", "key id 1")
    assert isinstance(verifier.verify(new), Verified)


def test_rotation_signs_with_the_newest_key_and_drops_keys_past_their_grace() -> None:
    ring = rotated(None, now=T0, random_bytes=fixed_bytes(1))
    ring = rotated(ring, now=T0 + DAY, random_bytes=fixed_bytes(2))
    assert ring.signing(T0 + DAY).id == 2
    assert [(k.id, k.retired) for k in ring.keys] == [(1, T0 + DAY), (2, None)]
    ring = rotated(ring, now=T0 + DAY + RETIRED_GRACE + 1, random_bytes=fixed_bytes(3))
    assert [k.id for k in ring.keys] == [2, 3]
    assert ring.signing(T0 + DAY + RETIRED_GRACE + 1).id == 3


def test_a_delayed_activation_keeps_the_old_key_signing_until_then() -> None:
    ring = rotated(None, now=T0, random_bytes=fixed_bytes(1))
    ring = rotated(ring, now=T0 + DAY, activate_at=T0 + DAY + 900,
                   random_bytes=fixed_bytes(2))
    assert ring.signing(T0 + DAY + 899).id == 1
    assert ring.signing(T0 + DAY + 900).id == 2
    assert [(k.id, k.retired) for k in ring.keys] == [(1, T0 + DAY + 900), (2, None)]
    # The grace counts from the retirement, not from the rotation.
    assert isinstance(ring.verifying(1, T0 + DAY + 900 + RETIRED_GRACE), ReturnPathKey)
    assert ring.verifying(1, T0 + DAY + 901 + RETIRED_GRACE) == "expired_key"


def test_a_key_created_in_the_future_verifies_but_does_not_sign_yet() -> None:
    ring = KeyRing([ReturnPathKey(id=1, secret=b"a" * 32, created=T0 - DAY),
                    ReturnPathKey(id=2, secret=b"b" * 32, created=T0 + 3600)])
    assert ring.signing(T0).id == 1
    assert ring.signing(T0 + 3600).id == 2
    assert isinstance(ring.verifying(2, T0), ReturnPathKey)


def test_key_ring_json_round_trips_and_never_prints_secrets() -> None:
    ring = rotated(rotated(None, now=T0, random_bytes=fixed_bytes(1)), now=T0 + 10.5,
                   random_bytes=fixed_bytes(2))
    again = parse_key_ring(dump_key_ring(ring))
    assert again.keys == ring.keys
    assert "\\x01" not in repr(ring.keys) and "secret" not in repr(ring.keys[0])


@pytest.mark.parametrize(("text", "problem"), [
    ("nope", "not JSON"),
    ('{"keys": []}', "no keys"),
    ('{"keys": [], "extra": 1}', '{"keys": [...]} and nothing else'),
    ('{"keys": [{"id": 1, "secret": "c2hvcnQ=", "created": "2026-01-01T00:00:00Z"}]}',
     "secret is 5 bytes"),
    ('{"keys": [{"id": 1, "secret": "!!", "created": "2026-01-01T00:00:00Z"}]}',
     "keys[0].secret: expected base64"),
    ('{"keys": [{"id": "1", "secret": "", "created": "2026-01-01T00:00:00Z"}]}',
     "keys[0].id: expected an integer"),
    ('{"keys": [{"id": 70000, "secret": "' + "A" * 44 + '", "created": "2026-01-01T00:00:00Z"}]}',
     "key id 70000: expected 1-65535"),
    ('{"keys": [{"id": 1, "secret": "' + "A" * 44 + '", "created": "yesterday"}]}',
     "keys[0].created: expected an RFC 3339 UTC time"),
    ('{"keys": [{"id": 1, "secret": "' + "A" * 44 + '", "created": "2026-01-01T00:00:00Z",'
     ' "kid": 3}]}', "unknown field(s) kid"),
])
def test_a_bad_key_ring_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(KeyRingError) as caught:
        parse_key_ring(text, origin="secret x")
    assert "secret x" in str(caught.value) and problem in str(caught.value)


def test_duplicate_key_ids_and_no_signing_key_are_refused() -> None:
    key = ReturnPathKey(id=1, secret=b"a" * 32, created=T0)
    with pytest.raises(KeyRingError, match="appears twice"):
        KeyRing([key, key])
    retired = KeyRing([ReturnPathKey(id=1, secret=b"a" * 32, created=T0, retired=T0 + 1)])
    with pytest.raises(KeyRingError, match="no key may sign now"):
        retired.signing(T0 + 2)


@pytest.mark.parametrize("size", [10_000, 1_000_000])
def test_a_huge_address_is_refused_with_its_reason(size: int) -> None:
    paths, store, verifier, _ = rig()
    address = make(paths, store)
    local, _, domain = address.partition("@")
    cases = {"b-" + "a" * size + "@" + BOUNCE: "malformed",
             local + "@" + "x" * size: "wrong_domain",
             "@" * size: "malformed",
             local + "\x00" * size + "@" + domain: "malformed"}
    for text, reason in cases.items():
        result = verifier.verify(text)
        assert isinstance(result, Refusal) and result.reason == reason
        assert len(result.detail) < 400  # a counted reason, not the input echoed back
