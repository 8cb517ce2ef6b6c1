"""Contract v1: valid envelopes round-trip; each invalid one gets an error naming field + rule."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.envelope import EnvelopeError, decode, encode, from_dict

atext = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~-", min_size=1,
                max_size=12)
local = st.lists(atext, min_size=1, max_size=3).map(".".join)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domain = st.tuples(st.lists(label, min_size=1, max_size=3), st.from_regex(r"[a-z]{2,6}",
                                                                          fullmatch=True)).map(
    lambda t: ".".join([*t[0], t[1]]))
address = st.tuples(local, domain).map(lambda t: f"{t[0]}@{t[1]}")
ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)
meta_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                        st.text(max_size=20))


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict:
    to = draw(st.lists(address, min_size=1, max_size=100, unique_by=str.lower))
    data = {
        "v": 1,
        "id": draw(ids),
        "from": draw(address),
        "to": to,
    }
    if draw(st.booleans()):
        data["raw"] = base64.b64encode(draw(st.binary(min_size=1, max_size=300))).decode()
    else:
        data["raw_s3"] = f"s3://bucket-{draw(st.integers(0, 99))}/k/{draw(ids)}.eml"
    for key in ("pool", "tenant", "campaign"):
        if draw(st.booleans()):
            data[key] = draw(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True))
    if draw(st.booleans()):
        data["meta"] = draw(st.dictionaries(st.text(min_size=1, max_size=10), meta_values,
                                            max_size=5))
    if draw(st.booleans()):
        data["expires"] = "2027-01-02T03:04:05Z"
    return data


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid_envelopes())
def test_valid_envelopes_round_trip(data: dict) -> None:
    env = decode(json.dumps(data))
    again = decode(encode(env))
    assert again == env
    assert env.id == data["id"]
    assert list(env.recipients) == data["to"]  # kept as written, case included
    assert (env.raw is None) == ("raw" not in data)


@pytest.mark.parametrize(
    ("mutate", "field", "rule"),
    [
        (lambda d: d.pop("v"), "v", "required"),
        (lambda d: d.update(v=2), "v", "unsupported version"),
        (lambda d: d.update(v=True), "v", "unsupported version"),
        (lambda d: d.update(id=""), "id", "1-128 characters"),
        (lambda d: d.update(id="a" * 129), "id", "1-128 characters"),
        (lambda d: d.update(id="has space"), "id", "1-128 characters"),
        (lambda d: d.update(**{"from": "no-at-sign"}), "from", "missing '@'"),
        (lambda d: d.update(to=[]), "to", "1-100"),
        (lambda d: d.update(to=[f"u{i}@example.com" for i in range(101)]), "to", "1-100"),
        (lambda d: d.update(to="a@example.com"), "to", "list"),
        (lambda d: d.update(to=["a@example.com\r\nRCPT TO:<x@evil.test>"]), "to[0]",
         "control character"),
        (lambda d: d.update(to=["a@exa\x00mple.com"]), "to[0]", "control character"),
        (lambda d: d.update(to=["a\n@example.com"]), "to[0]", "control character"),
        (lambda d: d.update(to=["<a@example.com>"]), "to[0]", "'<' or '>'"),
        (lambda d: d.update(to=["a@example.com", "A@EXAMPLE.com"]), "to[1]", "duplicate"),
        (lambda d: d.update(to=["a@[10.0.0.1]"]), "to[0]", "invalid label"),
        (lambda d: d.update(to=["a@localhost"]), "to[0]", "two labels"),
        (lambda d: d.update(to=["\u00e9@example.com"]), "to[0]", "SMTPUTF8"),
        (lambda d: d.update(raw_s3="s3://b/k"), "raw", "exactly one"),
        (lambda d: d.pop("raw"), "raw", "exactly one"),
        (lambda d: d.update(raw="!!!not base64"), "raw", "base64"),
        (lambda d: (d.pop("raw"), d.update(raw_s3="https://x/y")), "raw_s3", "s3://"),
        (lambda d: d.update(pool="bad pool"), "pool", "1-128"),
        (lambda d: d.update(meta=[1]), "meta", "flat JSON object"),
        (lambda d: d.update(meta={"a": {"b": 1}}), "meta.a", "values must be"),
        (lambda d: d.update(meta={"a": "x" * 5000}), "meta", "at most 4096"),
        (lambda d: d.update(expires="tomorrow"), "expires", "RFC 3339"),
        (lambda d: d.update(expires="2027-01-01T00:00:00"), "expires", "UTC offset"),
        (lambda d: d.update(tpo="x"), "tpo", "unknown key"),
        (lambda d: d.update(_attempt="x"), "_attempt", "non-negative"),
    ],
)
def test_invalid_envelope_names_field_and_rule(mutate, field: str, rule: str) -> None:
    data = {"v": 1, "id": "m-1", "from": "news@example.com", "to": ["ann@example.org"],
            "raw": base64.b64encode(b"Subject: hi\r\n\r\nbody\r\n").decode()}
    mutate(data)
    with pytest.raises(EnvelopeError) as info:
        decode(json.dumps(data))
    assert info.value.field == field
    assert rule in info.value.rule


def test_callers_cannot_set_reserved_keys() -> None:
    data = {"v": 1, "id": "m", "from": "a@example.com", "to": ["b@example.com"], "raw": "SGk=",
            "_attempt": 3}
    with pytest.raises(EnvelopeError) as info:
        from_dict(data, allow_reserved=False)
    assert info.value.field == "_attempt" and "reserved" in info.value.rule
    assert from_dict(data, allow_reserved=True).attempt == 3


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[1,2]", b"", b"null", b"{" * 100000])
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode(body)
    assert info.value.field == "body"


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5).map(
                     json.dumps)))
def test_arbitrary_input_never_crashes(body) -> None:
    try:
        decode(body)
    except EnvelopeError as exc:
        assert exc.field and exc.rule


def test_idn_domain_becomes_a_label() -> None:
    data = {"v": 1, "id": "m", "from": "a@example.com", "to": ["kunde@b\u00fccher.example"],
            "raw": "SGk="}
    env = decode(json.dumps(data))
    assert env.recipients == ("kunde@xn--bcher-kva.example",)
