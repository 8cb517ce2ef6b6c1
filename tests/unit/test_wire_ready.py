"""A message checked once travels as WireReady: the DKIM signer and the SMTP client
take it as it is. What they would have computed by scanning it again must be what
they compute from the mark, and nothing unchecked may carry the mark."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quiver.content.check import prepare
from quiver.content.errors import ContentError
from quiver.dkim import DkimSigner, generate_private_key
from quiver.message import MAX_LINE, WireReady, prefixed, to_crlf
from quiver.smtp.framing import data_payload, payload_problem

SIGNER = DkimSigner.from_pem(domain="news.example.test", selector="s1",
                             algorithm="ed25519-sha256",
                             pem=generate_private_key("ed25519-sha256"))
HEAD = b"From: a@news.example.test\r\nTo: b@example.test\r\nSubject: s\r\n\r\n"
lines = st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                 max_size=20)
ends = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    parts = draw(lines)
    out = b"".join(part + draw(ends) for part in parts)
    if draw(st.booleans()):
        out += b"x" * draw(st.integers(min_value=990, max_value=1010))  # near the limit
    return out


@given(bodies(), st.booleans())
def test_a_prepared_message_is_framed_as_its_plain_bytes_are(body: bytes, eight: bool) -> None:
    try:
        ready = prepare(HEAD + body, max_size=1 << 20, long_lines="fold")
    except ContentError:
        return
    plain = bytes(ready.message)
    assert to_crlf(ready.message) == to_crlf(plain)
    assert data_payload(ready.message) == data_payload(plain)
    assert SIGNER.sign(ready.message, timestamp=1) == SIGNER.sign(plain, timestamp=1)
    assert payload_problem(ready.message, eight_bit=eight) == payload_problem(plain,
                                                                              eight_bit=eight)
    if type(ready.message) is WireReady:
        assert payload_problem(plain, eight_bit=True) is None
        assert to_crlf(plain) == plain


def test_only_a_checked_message_is_marked() -> None:
    ready = prepare(HEAD + b"hello\nworld\n", max_size=1 << 20, long_lines="fold")
    assert type(ready.message) is WireReady
    assert ready.message == HEAD + b"hello\r\nworld\r\n"
    # A long line is re-encoded: the result is plain bytes, checked again when sent.
    folded = prepare(HEAD + b"y" * (MAX_LINE + 5) + b"\r\n", max_size=1 << 20,
                     long_lines="fold")
    assert type(folded.message) is not WireReady
    # What is built from a checked message is plain bytes again.
    assert type(ready.message[3:]) is bytes
    assert type(ready.message + b"x") is bytes


@given(st.binary(max_size=300))
def test_a_prefix_keeps_the_mark_only_when_it_is_whole_crlf_lines(head: bytes) -> None:
    message = prepare(HEAD + b"body\r\n", max_size=1 << 20, long_lines="fold").message
    joined = prefixed(head, message)
    assert joined == head + message
    if type(joined) is WireReady:
        assert head.endswith(b"\r\n") and b"\0" not in head and to_crlf(head) == head
        assert payload_problem(bytes(joined), eight_bit=True) is None
    # An unchecked message never gains the mark.
    assert type(prefixed(head, bytes(message))) is bytes


def test_a_signature_with_a_line_too_long_or_a_bare_lf_is_not_marked() -> None:
    message = prepare(HEAD + b"body\r\n", max_size=1 << 20, long_lines="fold").message
    assert type(prefixed(b"DKIM-Signature: v=1\r\n", message)) is WireReady
    assert type(prefixed(b"DKIM-Signature: v=1\n", message)) is bytes
    assert type(prefixed(b"X: " + b"a" * MAX_LINE + b"\r\n", message)) is bytes
    assert type(prefixed(b"X: a\0\r\n", message)) is bytes
    assert type(prefixed(b"X: a", message)) is bytes
