"""Re-encoding long lines and 8-bit parts, as properties over generated MIME messages.

For any multipart message (nested, with message/rfc822 parts, preambles, every
transfer encoding, 8-bit text, lines up to a few thousand octets, long header
lines): after `prepare` no line is over 998 octets; after `seven_bit` no byte is
8-bit; the standard library's parser reads the same tree (types, boundaries,
preambles, every header but Content-Transfer-Encoding) and the same decoded
content in every leaf; and the result DKIM-verifies with dkimpy once quiver's
signer has signed it.
"""

from __future__ import annotations

import binascii
import email
import email.policy
from email.message import Message

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dkim import Zone, wire

from quiver.content import MAX_LINE, prepare, seven_bit
from quiver.dkim import DkimSigner, generate_private_key

# Printable ASCII without '-', so no generated line can be taken for a delimiter
# except the ones planted on purpose.
_ASCII = bytes(c for c in range(0x20, 0x7F) if c != ord("-"))
_BYTES = _ASCII + b"\t" + bytes(range(0x80, 0x100))
_BOUNDARY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,./:=?"


@pytest.fixture(scope="module")
def signing() -> tuple[DkimSigner, Zone]:
    pem = generate_private_key("rsa-sha256")
    signer = DkimSigner.from_pem(domain="example.com", selector="s1", algorithm="rsa-sha256",
                                 pem=pem)
    zone = Zone()
    zone.add(signer, pem)
    return signer, zone


@st.composite
def line(draw: st.DrawFn, *, eight_bit: bool, boundaries: tuple[bytes, ...]) -> bytes:
    alphabet = _BYTES if eight_bit else _ASCII
    seed = draw(st.binary(min_size=1, max_size=12).map(
        lambda b: bytes(alphabet[x % len(alphabet)] for x in b)))
    length = draw(st.one_of(st.integers(0, 90), st.integers(990, 1001),
                            st.integers(1002, 3000)))
    text = (seed * (length // len(seed) + 1))[:length]
    if boundaries and draw(st.booleans()):
        # A delimiter inside a line: re-encoding must not put it at a line start. After
        # 75 plain characters is where quoted-printable breaks a line; a delimiter line
        # is one that holds nothing else.
        delimiter = b"--" + draw(st.sampled_from(boundaries))
        if draw(st.booleans()):
            return b"x" * 75 + delimiter + draw(st.sampled_from([b"", b"--"]))
        cut = draw(st.integers(0, length))
        text = text[:cut] + delimiter + b"x" + text[cut:]  # not a delimiter line: more follows
    return text


@st.composite
def content_lines(draw: st.DrawFn, *, eight_bit: bool, boundaries: tuple[bytes, ...]) -> bytes:
    lines = draw(st.lists(line(eight_bit=eight_bit, boundaries=boundaries), min_size=1,
                          max_size=5))
    return b"\r\n".join(lines)


@st.composite
def extra_header(draw: st.DrawFn) -> bytes:
    """A field, sometimes with a line over 998 octets that can be folded at its spaces."""
    words = draw(st.integers(1, 400))
    return b"X-Note: " + b" ".join(b"w%d" % n for n in range(words)) + b"\r\n"


@st.composite
def leaf(draw: st.DrawFn, boundaries: tuple[bytes, ...]) -> bytes:
    text = draw(st.booleans())
    eight = draw(st.booleans())
    ctype = (b"text/plain; charset=utf-8" if text else
             draw(st.sampled_from([b"application/octet-stream", b"image/png"])))
    cte = draw(st.sampled_from([None, b"7bit", b"8bit", b"quoted-printable", b"base64"]))
    content = draw(content_lines(eight_bit=eight, boundaries=boundaries))
    if cte == b"quoted-printable":
        # CRLF line ends, and no encoded line that starts with "--" (it could be a delimiter).
        body = binascii.b2a_qp(content, istext=True).replace(b"=\n", b"=\r\n").replace(
            b"\n--", b"\n=2D-")
        body = b"=2D-" + body[2:] if body.startswith(b"--") else body
        if draw(st.booleans()):
            body = body.replace(b"=\r\n", b"")  # soft breaks dropped: long encoded lines
    elif cte == b"base64":
        raw = draw(st.binary(max_size=3000))
        flat = binascii.b2a_base64(raw, newline=False)
        body = flat if draw(st.booleans()) else b"\r\n".join(
            flat[i:i + 76] for i in range(0, len(flat), 76))
    else:
        body = content
    head = b"Content-Type: " + ctype + b"\r\n"
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    if draw(st.booleans()):
        head += draw(extra_header())
    return head + b"\r\n" + body


@st.composite
def entity(draw: st.DrawFn, depth: int, boundaries: tuple[bytes, ...]) -> bytes:
    kind = draw(st.sampled_from(["leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        return draw(leaf(boundaries))
    if kind == "message":
        inner = draw(entity(depth + 1, boundaries))
        return (b"Content-Type: message/rfc822\r\n\r\nFrom: inner@example.net\r\n"
                b"Subject: forwarded\r\n" + inner)
    boundary = b"b%d_" % depth + draw(st.text(_BOUNDARY_CHARS, min_size=1, max_size=30)
                                        ).encode()
    inside = (*boundaries, boundary)
    parts = draw(st.lists(entity(depth + 1, inside), min_size=1, max_size=3))
    preamble = draw(st.sampled_from([b"", b"This is a multipart message.\r\n"]))
    epilogue = draw(st.sampled_from([b"", b"\r\nepilogue text\r\n"]))
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related"]))
    body = preamble + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return (b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n\r\n'
            + body + b"--" + boundary + b"--" + epilogue)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    top = draw(entity(0, ()))
    mime = b"MIME-Version: 1.0\r\n" if draw(st.booleans()) else b""
    return (b"From: Sender <news@example.com>\r\nTo: ann@example.org\r\nSubject: generated\r\n"
            + mime + top)


def tree(message: bytes) -> list[tuple]:
    """What must not change: each entity's type, boundary, preamble, epilogue and header
    fields (unfolded) other than Content-Transfer-Encoding and MIME-Version."""
    def headers(part: Message) -> list[tuple[str, str]]:
        return [(k.lower(), "".join(v.split("\r\n")))
                for k, v in part.items()
                if k.lower() not in ("content-transfer-encoding", "mime-version")]
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    return [(p.get_content_type(), p.get_boundary(), p.preamble, p.epilogue, headers(p))
            for p in parsed.walk()]


def leaves(message: bytes) -> list[bytes | None]:
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    out = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        if part.get("Content-Transfer-Encoding", "").strip().lower() == "base64":
            out.append(binascii.a2b_base64(part.get_payload().encode("ascii", "surrogateescape")))
        else:
            out.append(part.get_payload(decode=True))
    return out


def longest(message: bytes) -> int:
    return max(map(len, message.split(b"\r\n")))


def verifies(signer: DkimSigner, zone: Zone, message: bytes) -> bool:
    return bool(dkim.verify(signer.sign(message) + wire(message), dnsfunc=zone))


@given(messages())
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_reencoded_messages_have_short_lines_same_content_same_structure_and_verify(
        signing: tuple[DkimSigner, Zone], raw: bytes) -> None:
    signer, zone = signing
    ready = prepare(raw, max_size=10**8, long_lines="reencode")
    out = ready.message
    assert longest(out) <= MAX_LINE
    assert leaves(out) == leaves(raw)
    assert tree(out) == tree(raw)
    assert ready.eight_bit == (not out.isascii())
    assert verifies(signer, zone, out)
    if ready.eight_bit:
        seven = seven_bit(out)
        assert seven.isascii()
        assert longest(seven) <= MAX_LINE
        assert leaves(seven) == leaves(raw)
        assert tree(seven) == tree(raw)
        assert verifies(signer, zone, seven)
    else:
        assert seven_bit(out) == out
