"""Message content checks (quiver.content.prepare): what is refused and how the error says
it, long lines at and around 998 octets, big bodies, header folding, the size limit."""

from __future__ import annotations

import binascii
import email
import email.policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.content import DEFAULT_MAX_MESSAGE_SIZE, MAX_LINE, ContentError, prepare, seven_bit
from quiver.message import WireReady

HEAD = b"From: News <news@example.com>\r\nTo: ann@example.org\r\nSubject: hi\r\n"
BIG = 100 * 1024 * 1024


def ready(raw: bytes, *, long_lines: str = "reencode"):
    return prepare(raw, max_size=BIG, long_lines=long_lines)  # type: ignore[arg-type]


def refusal(raw: bytes, *, long_lines: str = "reencode", max_size: int = BIG) -> str:
    with pytest.raises(ContentError) as info:
        prepare(raw, max_size=max_size, long_lines=long_lines)  # type: ignore[arg-type]
    return str(info.value)


def lines_of(message: bytes) -> list[bytes]:
    return message.split(b"\r\n")


def longest(message: bytes) -> int:
    return max(map(len, lines_of(message)))


@pytest.mark.parametrize(("raw", "expected"), [
    (b"", "empty message"),
    (HEAD + b"\r\nbody with a \x00 in it\r\n", "line 5: NUL byte"),
    (b"\r\nbody\r\n", "line 1: no header section: the message starts with an empty line"),
    (b"just some text\r\nand more\r\n", "line 1: not a header field: b'just some text'"),
    (b"From: a@example.com\r\nthis line is body text\r\n", "line 2: not a header field"),
    (b" From: a@example.com\r\n\r\nx\r\n", "line 1: the message starts with a continuation"),
    (b"From : a@example.com\r\n\r\nx\r\n", "line 1: not a header field: b'From : a@example.com'"),
    (b"Fr\x7fom: a@example.com\r\n\r\nx\r\n", "line 1: not a header field"),
    (b"Subject: no sender\r\nTo: b@example.org\r\n\r\nx\r\n", "no From header field"),
    (HEAD + b"From: other@example.com\r\n\r\nx\r\n", "2 From header fields"),
    (b"From: Ren\xc3\xa9 <r@example.com>\r\n\r\nx\r\n",
     "line 1: non-ASCII byte 0xc3 in a header field: write non-ASCII header text as RFC 2047"),
])
def test_a_message_that_is_not_rfc_5322_is_refused_naming_the_problem(raw: bytes,
                                                                         expected: str) -> None:
    assert refusal(raw).startswith(expected)


def test_random_binary_is_refused() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"
    assert "NUL byte" in refusal(png)
    assert refusal(bytes(range(1, 256)) * 3).startswith("line 1: not a header field")


@given(st.binary(min_size=1, max_size=2000))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_are_refused_or_come_out_sendable(raw: bytes) -> None:
    """Whatever comes in: a ContentError, or a message that can travel as it is."""
    try:
        out = ready(raw)
    except ContentError as exc:
        assert str(exc)
        return
    assert out.message.startswith(raw[:1])
    assert longest(out.message) <= MAX_LINE
    assert b"\0" not in out.message
    assert out.eight_bit == (not out.message.isascii())


_NAME = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                       blacklist_characters=":"), min_size=1, max_size=20)


@given(bad=st.sampled_from(["Na me", "Name ", "Na\x01me", "", "Name\x80", "Na\tme"]),
       good=st.lists(_NAME, max_size=4))
def test_a_field_name_outside_printable_ascii_is_refused_with_its_line(
        bad: str, good: list[str]) -> None:
    fields = b"".join(f"{name}: v\r\n".encode() for name in good)
    raw = b"From: a@example.com\r\n" + fields + bad.encode("latin-1") + b": v\r\n\r\nbody\r\n"
    assert refusal(raw).startswith(f"line {2 + len(good)}: not a header field: ")


def test_a_folded_field_is_a_field() -> None:
    raw = (b"From: a@example.com\r\nSubject: one\r\n two\r\n\tthree\r\n\r\nbody\r\n")
    assert ready(raw).message == raw


def test_a_message_without_a_body_is_a_message() -> None:
    raw = b"From: a@example.com\r\nSubject: x"
    assert ready(raw).message == raw


def test_line_ends_are_made_crlf() -> None:
    raw = b"From: a@example.com\nSubject: x\n\nbody\rmore\n"
    assert ready(raw).message == b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\nmore\r\n"


def test_a_plain_message_is_returned_as_it_came() -> None:
    raw = HEAD + b"\r\n" + b"x" * 998 + b"\r\nshort\r\n"
    out = ready(raw)
    # The same bytes, marked as checked (signing and SMTP do not scan them again).
    assert out.message == raw and type(out.message) is WireReady and not out.eight_bit


@pytest.mark.parametrize("length", range(990, 1002))
@pytest.mark.parametrize("where", ["plain", "text part", "binary part"])
def test_line_length_sweep_990_to_1001(length: int, where: str) -> None:
    line = (b"0123456789" * 101)[:length]
    if where == "plain":
        raw = HEAD + b"\r\n" + line + b"\r\nend\r\n"
    else:
        ctype = b"text/plain" if where == "text part" else b"application/octet-stream"
        raw = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
               b"--b1\r\nContent-Type: " + ctype + b"\r\n\r\n" + line + b"\r\n--b1--\r\n")
    out = ready(raw)
    assert longest(out.message) <= MAX_LINE
    if length <= MAX_LINE:
        assert out.message == raw and type(out.message) is WireReady
    else:
        assert out.message != raw
        assert decoded_leaves(out.message) == decoded_leaves(raw)
        line_number = 5 if where == "plain" else 10
        with pytest.raises(ContentError, match=f"^line {line_number}: {length} octets long; "):
            ready(raw, long_lines="refuse")


def test_refuse_names_the_first_long_line() -> None:
    raw = HEAD + b"\r\nok\r\n" + b"y" * 1500 + b"\r\n" + b"z" * 2000 + b"\r\n"
    assert refusal(raw, long_lines="refuse") == (
        "line 6: 1500 octets long; lines may be at most 998 (RFC 5322 2.1.1) and "
        "content.long_lines is 'refuse'")


@pytest.mark.parametrize("size", [1024 * 1024, 10 * 1024 * 1024])
def test_big_bodies_of_long_lines_are_reencoded(size: int) -> None:
    text = (b"word " * (size // 5))[:size]  # one line of `size` octets
    blob = bytes(range(32, 127)) * (size // 95)
    raw = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="big"\r\n\r\n'
           b"--big\r\nContent-Type: text/plain\r\n\r\n" + text + b"\r\n"
           b"--big\r\nContent-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--big--\r\n")
    out = ready(raw)
    assert longest(out.message) <= 76
    assert decoded_leaves(out.message) == decoded_leaves(raw)


def test_big_short_lined_body_is_one_fast_scan() -> None:
    raw = HEAD + b"\r\n" + b"a short line of text\r\n" * (10 * 1024 * 1024 // 22)
    out = ready(raw).message
    assert out == raw and type(out) is WireReady


def test_a_long_header_line_is_folded_at_whitespace() -> None:
    recipients = ", ".join(f"user{n}@example.org" for n in range(120)).encode()
    raw = b"From: a@example.com\r\nTo: " + recipients + b"\r\nSubject: x\r\n\r\nbody\r\n"
    out = ready(raw).message
    assert longest(out) <= MAX_LINE
    head = out.split(b"\r\n\r\n")[0]
    # Unfolding (RFC 5322 2.2.3: remove each CRLF before whitespace) gives the field back.
    assert head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t") == raw.split(b"\r\n\r\n")[0]
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_a_long_header_line_without_whitespace_is_refused() -> None:
    raw = b"From: a@example.com\r\nX-Token: " + b"t" * 1200 + b"\r\n\r\nbody\r\n"
    assert refusal(raw) == (
        "line 2: a header line of 1209 octets (at most 998) has no whitespace to fold "
        "it at: shorten it")
    with pytest.raises(ContentError, match=r"^line 2: 1209 octets long"):
        ready(raw, long_lines="refuse")


def test_the_size_limit_is_checked_first_and_names_both_sizes() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 40 * 1024 * 1024
    raw = HEAD + b"\r\n" + b"x" * 2000
    assert refusal(raw, max_size=1024) == (
        f"message is {len(raw):,} bytes, over the limit of 1,024 (max_message_size)")
    assert ready(raw).message  # and fine under a larger limit


def test_eight_bit_body_is_kept_and_flagged() -> None:
    raw = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\nCaf\xc3\xa9 cr\xc3\xa8me\r\n"
    out = ready(raw)
    assert out.message == raw and type(out.message) is WireReady and out.eight_bit
    seven = seven_bit(out.message)
    assert seven.isascii()
    assert b"MIME-Version: 1.0\r\n" in seven  # it was plain RFC 5322: now MIME
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in seven
    assert decoded_leaves(seven) == decoded_leaves(raw)


def test_eight_bit_data_that_could_not_be_written_in_seven_bits_is_refused() -> None:
    part_header = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
                   b"\r\n--b\r\nContent-Disposition: attachment; filename=\"caf\xc3\xa9.txt\"\r\n"
                   b"\r\ndata\r\n--b--\r\n")
    assert refusal(part_header).startswith("line 8: non-ASCII byte 0xc3 in a header field")
    preamble = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
                b"\r\npr\xc3\xa9amble\r\n--b\r\n\r\ndata\r\n--b--\r\n")
    assert refusal(preamble) == ("line 7: 8-bit data in a multipart's preamble or epilogue "
                                 "cannot be converted for servers without 8BITMIME")
    unknown = HEAD + b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin \xff\r\n"
    assert refusal(unknown).startswith(
        "line 6: 8-bit data in a part whose Content-Transfer-Encoding is 'x-uuencode'")


def test_a_long_line_in_a_preamble_is_refused_not_dropped() -> None:
    raw = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
           + b"p" * 1200 + b"\r\n--b\r\n\r\ndata\r\n--b--\r\n")
    assert refusal(raw) == ("line 7: a line of 1200 octets (at most 998) in a multipart's "
                            "preamble or epilogue cannot be re-encoded")


def test_only_the_part_with_a_long_line_is_rewritten() -> None:
    untouched = (b"--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                 b"<p>short</p>\r\n")
    raw = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n'
           b"\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit"
           b"\r\nContent-ID: <p1>\r\n\r\n" + b"long " * 300 + b"\r\n" + untouched + b"--b--\r\n")
    out = ready(raw).message
    assert out.startswith(raw[:raw.index(b"--b\r\n") + 5])  # header, preamble, delimiter
    assert (b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable"
            b"\r\nContent-ID: <p1>\r\n\r\nlong long") in out  # the field rewritten in its place
    assert out.endswith(b"\r\n" + untouched + b"--b--\r\n")


@pytest.mark.parametrize("tail", [b"", b"--", b" and more text " * 100])
def test_a_hyphenated_long_line_cannot_become_a_delimiter(tail: bytes) -> None:
    """Quoted-printable breaks a long line every 76 characters; where a break would put
    "--boundary" at the start of a line, that line would end the part early."""
    boundary = b"sep42"
    line = b"x" * 75 + b"--" + boundary + tail  # b2a_qp breaks right before the "--"
    raw = (HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="'
           + boundary + b'"\r\n\r\n--' + boundary + b"\r\nContent-Type: text/plain\r\n\r\n"
           + line + b"\r\n" + b"y" * 1200 + b"\r\n--" + boundary
           + b"\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--" + boundary + b"--\r\n")
    out = ready(raw).message
    assert out.count(b"\r\n--" + boundary) == raw.count(b"\r\n--" + boundary) == 3
    assert longest(out) <= 76
    assert decoded_leaves(out) == decoded_leaves(raw)


def decoded_leaves(message: bytes) -> list[tuple[str, bytes]]:
    """Each leaf part's type and decoded content, read by the standard library's parser."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    out = []
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if part.get("Content-Transfer-Encoding", "").lower() == "base64":
            # compat32 gives up on bad padding; decode as readers do, leniently.
            payload = binascii.a2b_base64(part.get_payload().encode())
        out.append((part.get_content_type(), payload))
    return out


@given(st.lists(st.integers(0, 1100), max_size=12), st.integers(0, 40), st.booleans())
def test_the_cheap_long_line_scan_agrees_with_measuring_every_line(
        lengths: list[int], offset: int, last_crlf: bool) -> None:
    from quiver.content.lines import has_long_line

    buf = b"\r\n".join(b"x" * n for n in lengths) + (b"\r\n" if last_crlf else b"")
    start = min(offset, len(buf))
    exact = max(map(len, buf[start:].split(b"\r\n")), default=0) > MAX_LINE
    assert has_long_line(buf, start) == exact


def test_an_encoding_with_a_comment_is_read_as_its_token() -> None:
    raw = (HEAD + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit (as sent)\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\ncaf\xc3\xa9 " + b"x" * 1200 + b"\r\n")
    out = ready(raw).message
    # The first field counts, as readers take it; its replacement is the only one left.
    assert out.count(b"Content-Transfer-Encoding") == 1
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in out
    assert decoded_leaves(out) == [("text/plain", b"caf\xc3\xa9 " + b"x" * 1200 + b"\r\n")]
