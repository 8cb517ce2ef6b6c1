"""Command lines and the DATA payload: injection refused, line ends normalised, dots stuffed.

Each attack class has a named test (SMTP command injection, SMTP smuggling with bare
line ends, an early end-of-data), and the payload is checked against the receiver's view
for arbitrary bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.message import to_crlf
from quiver.smtp.framing import (
    UnsafeArgument,
    data_payload,
    ehlo,
    mail,
    payload_problem,
    rcpt,
)


def envelope(sender: str, recipients: list[str]) -> list[bytes]:
    """The lines a session writes for one transaction's envelope."""
    return [mail(sender), *(rcpt(r) for r in recipients)]


def unstuff(payload: bytes) -> bytes:
    """What a receiver stores: the lines before the terminator, one leading dot removed."""
    assert payload.endswith(b"\r\n.\r\n") or payload == b".\r\n"
    end = payload.find(b"\r\n.\r\n")
    assert end == len(payload) - 5 or payload == b".\r\n", "an earlier end-of-data"
    lines = payload[: end + 2].split(b"\r\n")[:-1] if end >= 0 else []
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


def test_envelope_lines() -> None:
    assert envelope("a@b.test", ["c@d.test", "e@f.test"]) == [
        b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n", b"RCPT TO:<e@f.test>\r\n"]
    assert envelope("", ["c@d.test"])[0] == b"MAIL FROM:<>\r\n"  # a bounce's null path


@pytest.mark.parametrize("bad", [
    "a@b.test\r\nRCPT TO:<x@evil.test>", "a@b.test\nDATA", "a@b.test\rQUIT", "a\x00@b.test",
    "a b@c.test", "a@b.test> SIZE=1", "<a@b.test", "ä@b.test", "a@b.test\t", "a@b\x7f.test",
])
def test_command_injection_is_refused_in_every_argument(bad: str) -> None:
    with pytest.raises(UnsafeArgument):
        envelope(bad, ["ok@d.test"])
    with pytest.raises(UnsafeArgument):
        envelope("ok@b.test", ["ok@d.test", bad])


def test_ehlo_name_is_checked() -> None:
    assert ehlo("o1.mail.test") == b"EHLO o1.mail.test\r\n"
    assert ehlo("o1.mail.test", verb="HELO") == b"HELO o1.mail.test\r\n"
    for bad in ("", "a b", "a\r\nMAIL FROM:<x@y>", "é.test"):
        with pytest.raises(UnsafeArgument):
            ehlo(bad)


def test_empty_recipient_is_refused() -> None:
    with pytest.raises(UnsafeArgument):
        envelope("a@b.test", [""])


def test_payload_of_a_plain_message() -> None:
    assert data_payload(b"Subject: x\r\n\r\nhello\r\n") == b"Subject: x\r\n\r\nhello\r\n.\r\n"


def test_leading_dots_are_stuffed() -> None:
    payload = data_payload(b".starts\r\nmid\r\n.\r\n..two\r\nend")
    assert payload == b"..starts\r\nmid\r\n..\r\n...two\r\nend\r\n.\r\n"


@pytest.mark.parametrize("smuggled", [
    b"a\n.\nMAIL FROM:<x@evil.test>\n",  # bare LF around the dot
    b"a\r\n.\nMAIL FROM:<x@evil.test>\r\n",
    b"a\n.\r\nMAIL FROM:<x@evil.test>\r\n",
    b"a\r.\rMAIL FROM:<x@evil.test>\r",  # bare CR
    b"a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n",  # a plain early terminator
])
def test_smuggling_an_end_of_data_is_impossible(smuggled: bytes) -> None:
    payload = data_payload(smuggled)
    # The only CRLF . CRLF is the terminator; the receiver sees the injected line as text.
    assert payload.count(b"\r\n.\r\n") == 1 and payload.endswith(b"\r\n.\r\n")
    assert b"\r\nMAIL FROM:<x@evil.test>\r\n" in unstuff(payload)
    assert b"\r" not in payload.replace(b"\r\n", b"") and b"\n" not in payload.replace(
        b"\r\n", b"")


def test_unterminated_last_line_gets_its_crlf() -> None:
    assert data_payload(b"Subject: x\r\n\r\nno newline") == (
        b"Subject: x\r\n\r\nno newline\r\n.\r\n")
    assert data_payload(b"") == b"\r\n.\r\n"


@pytest.mark.parametrize("length", range(990, 1002))
def test_long_lines_travel_intact(length: int) -> None:
    # Framing never re-wraps (that would break the DKIM body hash): the sender re-encodes
    # long lines before signing, and the session refuses one that is left
    # (payload_problem) before it sends DATA.
    line = b"x" * length
    payload = data_payload(b"Subject: x\r\n\r\n" + line + b"\r\n")
    assert unstuff(payload) == b"Subject: x\r\n\r\n" + line + b"\r\n"


@given(st.binary(max_size=400))
def test_the_receiver_gets_the_crlf_form_of_any_message(message: bytes) -> None:
    payload = data_payload(message)
    expected = to_crlf(message)
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(payload) == expected


def _crlf_reference(message: bytes) -> bytes:
    # Line by line: CRLF, then a lone CR or a bare LF, each ends one line.
    out, i = bytearray(), 0
    while i < len(message):
        if message[i:i + 2] == b"\r\n":
            out += b"\r\n"
            i += 2
        elif message[i] in b"\r\n":
            out += b"\r\n"
            i += 1
        else:
            out.append(message[i])
            i += 1
    return bytes(out)


@given(st.lists(st.sampled_from([b"a", b" ", b".", b"\r", b"\n", b"\r\n", b"\n\r", b"\0"]),
                max_size=60).map(b"".join))
def test_line_ends_are_normalised_as_a_line_by_line_reading_would(message: bytes) -> None:
    assert to_crlf(message) == _crlf_reference(message)
    # Already normal: the very same object back (the hot path copies nothing).
    normal = _crlf_reference(message)
    assert to_crlf(normal) is normal or b"\r" not in normal


def test_eight_bit_content_is_declared_on_mail_from() -> None:
    assert mail("a@news.example", eight_bit=True) == b"MAIL FROM:<a@news.example> BODY=8BITMIME\r\n"
    assert mail("", eight_bit=True) == b"MAIL FROM:<> BODY=8BITMIME\r\n"
    assert mail("a@news.example") == b"MAIL FROM:<a@news.example>\r\n"


@pytest.mark.parametrize(("message", "eight_bit", "problem"), [
    (b"Subject: x\r\n\r\nok\r\n", False, None),
    (b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n", True, None),
    (b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n", False,
     "8-bit message content not declared with BODY=8BITMIME"),
    (b"Subject: x\r\n\r\na\0b\r\n", True, "the message has a NUL byte"),
    (b"x" * 998 + b"\r\n" + b"y" * 998, False, None),
    (b"x" * 998 + b"\n" + b"y" * 998 + b"\r" + b"z" * 998, False, None),
    (b"x" * 999 + b"\r\n", False, "a line of the message is longer than 998 octets"),
    (b"ok\n" + b"x" * 999, False, "a line of the message is longer than 998 octets"),
    (b"ok\r" + b"x" * 999 + b"\rok", False, "a line of the message is longer than 998 octets"),
    # One segment between LFs is long, but a lone CR ends a line inside it: 600 and 600.
    (b"x" * 600 + b"\r" + b"y" * 600 + b"\n", False, None),
])
def test_payload_problems_are_found_as_the_receiver_reads_lines(
        message: bytes, eight_bit: bool, problem: str | None) -> None:
    assert payload_problem(message, eight_bit=eight_bit) == problem


@given(st.lists(st.sampled_from([b"a" * 300, b"b", b"\r", b"\n", b"\r\n"]), max_size=30)
       .map(b"".join))
def test_a_long_line_is_found_exactly_whatever_ends_the_lines(message: bytes) -> None:
    long = max(map(len, _crlf_reference(message).split(b"\r\n")), default=0) > 998
    assert (payload_problem(message, eight_bit=False) is not None) == long
