"""X-Quiver-* header fields: mapped to the envelope, taken out, the rest byte-identical."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.ingress.control_headers import ControlHeaderError, take_control_headers

names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
    lambda n: not n.lower().startswith("x-quiver"))
values = st.from_regex(r"\A[ -~]{0,40}\Z")
labels = st.from_regex(r"\A[A-Za-z0-9._-]{1,20}\Z")
bodies = st.binary(max_size=200)


def field(name: str, value: str, fold: bool = False) -> bytes:
    if fold and " " in value.strip():
        head, _, tail = value.strip().partition(" ")
        return f"{name}: {head}\r\n {tail}\r\n".encode()
    return f"{name}: {value}\r\n".encode()


@given(st.lists(st.tuples(names, values), max_size=8), st.dictionaries(
    st.sampled_from(["Pool", "Tenant", "Campaign"]), labels),
    st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z"), values.filter(str.strip),
                    max_size=3),
    bodies, st.data())
def test_fields_are_mapped_and_everything_else_kept(
        plain: list[tuple[str, str]], control: dict[str, str], meta: dict[str, str],
        body: bytes, data: st.DataObject) -> None:
    kept = [field(n, v) for n, v in plain]
    taken = [field(f"X-Quiver-{k}", v) for k, v in control.items()]
    taken += [field(f"X-Quiver-Meta-{k.upper() if data.draw(st.booleans()) else k}", v,
                    fold=data.draw(st.booleans())) for k, v in meta.items()]
    order = data.draw(st.permutations(kept + taken))
    message = b"".join(order) + b"\r\n" + body
    fields, stripped = take_control_headers(message)
    assert stripped == b"".join(f for f in order if f in kept) + b"\r\n" + body
    assert fields.pool == control.get("Pool")
    assert fields.tenant == control.get("Tenant")
    assert fields.campaign == control.get("Campaign")
    # Names fold to lower case; a folded value unfolds to what was written.
    assert fields.meta == {k: v.strip() for k, v in meta.items()}


@given(st.binary(max_size=300))
def test_a_message_without_control_fields_is_the_same_object(message: bytes) -> None:
    if b"x-quiver-" in message.lower():
        return
    fields, stripped = take_control_headers(message)
    assert stripped is message and fields.tenant is None and not fields.meta


def test_a_control_name_in_the_body_is_left_alone() -> None:
    message = b"Subject: hi\r\n\r\nX-Quiver-Tenant: not a header\r\n"
    fields, stripped = take_control_headers(message)
    assert stripped == message and fields.tenant is None


@pytest.mark.parametrize("message, rule", [
    (b"X-Quiver-Pool: a\r\nX-Quiver-Pool: b\r\n\r\n", "given twice"),
    (b"X-Quiver-Tenent: a\r\n\r\n", "unknown header X-Quiver-Tenent"),
    (b"X-Quiver-Campaign:  \r\n\r\n", "empty"),
    (b"X-Quiver-Meta-k: \xff\r\n\r\n", "not UTF-8"),
])
def test_bad_control_fields_are_refused_with_the_rule(message: bytes, rule: str) -> None:
    with pytest.raises(ControlHeaderError, match=rule):
        take_control_headers(message)


def test_folded_value_is_unfolded() -> None:
    fields, stripped = take_control_headers(
        b"From: a@b.example\r\nX-Quiver-Meta-Note: one\r\n two\r\nSubject: s\r\n\r\nx")
    assert fields.meta == {"note": "one two"}
    assert stripped == b"From: a@b.example\r\nSubject: s\r\n\r\nx"
