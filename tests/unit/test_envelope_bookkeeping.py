"""Quiver's own bookkeeping in the queue contract (`_last`), the null reverse-path, and
`readable`, which recovers the caller's fields from a body the contract refuses."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.envelope import (
    MAX_LAST_TEXT,
    MAX_RECIPIENTS,
    EnvelopeError,
    LastReply,
    decode,
    encode,
    from_dict,
    readable,
)

atext = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
address = st.tuples(atext, label).map(lambda t: f"{t[0]}@{t[1]}.example")
replies = st.builds(
    LastReply,
    code=st.integers(400, 599),
    enhanced=st.one_of(st.just(""), st.from_regex(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}",
                                                  fullmatch=True)),
    text=st.text(max_size=MAX_LAST_TEXT),
    tried=st.booleans(),
)
BASE = {"v": 1, "id": "m-1", "from": "news@example.com",
        "raw": base64.b64encode(b"Subject: hi\r\n\r\nbody\r\n").decode()}


@st.composite
def with_last(draw: st.DrawFn) -> dict:
    to = draw(st.lists(address, min_size=1, max_size=20, unique_by=str.lower))
    # Few distinct replies, shared by several recipients, as after one transaction.
    pool = draw(st.lists(replies, min_size=1, max_size=3))
    last = {r: draw(st.sampled_from(pool)) for r in to if draw(st.booleans())}
    return {"to": to, "last": last, "attempt": draw(st.integers(0, 50))}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(with_last())
def test_last_replies_round_trip(case: dict) -> None:
    env = decode(json.dumps({**BASE, "to": case["to"]}))
    env = env.retry(recipients=env.recipients, attempt=case["attempt"], not_before=1.5,
                    queued_at=1.0, last=case["last"])
    text = encode(env)
    again = decode(text)
    assert again == env
    assert again.last == case["last"]
    # One entry per distinct reply, however many recipients share it.
    entries = json.loads(text).get("_last", [])
    assert len(entries) == len(set(case["last"].values()))


@settings(max_examples=300)
@given(st.one_of(
    st.none(), st.integers(), st.text(max_size=10),
    st.lists(st.dictionaries(st.sampled_from(["code", "enhanced", "text", "tried", "to", "x"]),
                             st.one_of(st.integers(-5, 700), st.text(max_size=10), st.booleans(),
                                       st.lists(st.integers(-2, 4), max_size=4)),
                             max_size=6), max_size=3)))
def test_malformed_last_is_refused_by_name(value: object) -> None:
    data = {**BASE, "to": ["a@x.example", "b@x.example", "c@x.example"], "_last": value}
    try:
        env = decode(json.dumps(data))
    except EnvelopeError as exc:
        assert exc.field.startswith("_last")
    else:
        assert set(env.last) <= {"a@x.example", "b@x.example", "c@x.example"}


def test_a_recipient_cannot_have_two_last_replies() -> None:
    entry = {"code": 451, "enhanced": "", "text": "x", "tried": True, "to": [0]}
    with pytest.raises(EnvelopeError) as info:
        decode(json.dumps({**BASE, "to": ["a@x.example"], "_last": [entry, entry]}))
    assert "twice" in info.value.rule


def test_bookkeeping_of_a_newer_version_is_ignored_not_refused() -> None:
    """During a rollout an older sender reads a newer one's re-enqueues."""
    env = decode(json.dumps({**BASE, "to": ["a@x.example"], "_attempt": 2, "_later": [1]}))
    assert env.attempt == 2
    with pytest.raises(EnvelopeError) as info:
        from_dict({**BASE, "to": ["a@x.example"], "_later": 1}, allow_reserved=False)
    assert info.value.field == "_later" and "reserved" in info.value.rule


def test_callers_cannot_set_last() -> None:
    with pytest.raises(EnvelopeError) as info:
        from_dict({**BASE, "to": ["a@x.example"], "_last": []}, allow_reserved=False)
    assert info.value.field == "_last" and "reserved" in info.value.rule


def test_the_null_reverse_path_is_an_empty_from() -> None:
    env = decode(json.dumps({**BASE, "from": "", "to": ["a@x.example"]}))
    assert env.sender == ""
    assert json.loads(encode(env))["from"] == ""
    assert from_dict({**BASE, "from": "", "to": ["a@x.example"]}, allow_reserved=False).sender == ""
    for bad in (" ", "<>", None):
        with pytest.raises(EnvelopeError) as info:
            decode(json.dumps({**BASE, "from": bad, "to": ["a@x.example"]}))
        assert info.value.field == "from"


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=20,
)
keys = st.sampled_from(["v", "id", "from", "to", "raw", "pool", "tenant", "campaign", "meta",
                        "_attempt", "_last", "other"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.dictionaries(keys, json_values, max_size=8).map(json.dumps)))
def test_readable_never_raises_and_keeps_only_valid_labels(body: str | bytes) -> None:
    got = readable(body)
    assert got.id is None or decode_id_ok(got.id)
    assert len(got.recipients) <= MAX_RECIPIENTS
    assert len({r.lower() for r in got.recipients}) == len(got.recipients)
    for label in (got.pool, got.tenant, got.campaign):
        assert label is None or (0 < len(label) <= 128 and " " not in label)


def decode_id_ok(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "._:@-" for c in value)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(address, min_size=1, max_size=10, unique_by=str.lower),
       st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True))
def test_readable_agrees_with_decode_on_a_valid_body(to: list[str], tenant: str) -> None:
    text = json.dumps({**BASE, "to": to, "tenant": tenant, "campaign": "c", "meta": {"k": 1},
                       "_attempt": 2})
    env, got = decode(text), readable(text)
    assert (got.id, got.sender, got.recipients, got.tenant, got.campaign, got.meta,
            got.attempt) == (env.id, env.sender, env.recipients, env.tenant, env.campaign,
                             env.meta, env.attempt)


def test_readable_keeps_each_valid_field_when_another_is_broken() -> None:
    body = json.dumps({**BASE, "to": ["Ann@Example.ORG", "evil\r\n@x.example", "ann@example.org",
                                      7], "tenant": "acme", "campaign": "bad campaign!",
                       "pool": "nope", "meta": [1], "expires": "tomorrow"})
    got = readable(body)
    assert got.id == "m-1" and got.sender == "news@example.com"
    assert got.recipients == ("Ann@example.org", "evil\r\n@x.example")
    assert (got.tenant, got.campaign, got.pool, got.meta) == ("acme", None, "nope", {})
    assert readable(json.dumps({**BASE, "id": "has space", "to": ["a@x.example"]})).id is None
    long = readable(json.dumps({**BASE, "to": [f"u{i}@x.example" for i in range(300)]}))
    assert len(long.recipients) == MAX_RECIPIENTS
