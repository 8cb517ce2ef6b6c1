"""The SMTP ingress's DATA reader: exact bytes in, and the smuggling variants refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.ingress.data_reader import DataEnd, DataReader, Outcome

LIMIT = 1 << 20
line_text = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def stuffed(message_lines: list[bytes]) -> bytes:
    """The wire form of CRLF lines: dot-stuffed, ended by <CRLF>.<CRLF>."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in message_lines) + b".\r\n"


def read(stream: list[bytes], limit: int = LIMIT) -> DataEnd | None:
    reader = DataReader(max_size=limit)
    for piece in stream:
        end = reader.feed(piece)
        if end is not None:
            return end
    return None


def lf_pieces(wire: bytes) -> list[bytes]:
    out: list[bytes] = []
    start = 0
    while start < len(wire):
        at = wire.find(b"\n", start)
        end = len(wire) if at < 0 else at + 1
        out.append(wire[start:end])
        start = end
    return out


def fragmented(stream: list[bytes], size: int) -> list[bytes]:
    """Each piece cut into `size`-byte fragments, as reads past the stream limit are
    (the limit is far above a dot line's 3 bytes, which is never cut)."""
    return [piece[i:i + size] if len(piece) > 3 else piece
            for piece in stream for i in range(0, len(piece) if len(piece) > 3 else 1, size)]


@given(st.lists(line_text, max_size=30), st.integers(min_value=1, max_value=50))
def test_a_crlf_message_comes_out_exactly(lines: list[bytes], size: int) -> None:
    wire = stuffed(lines)
    expected = b"".join(line + b"\r\n" for line in lines)
    for stream in (lf_pieces(wire), fragmented(lf_pieces(wire), size)):
        end = read(stream)
        assert end is not None and end.outcome is Outcome.ACCEPTED
        assert end.message == expected
        assert end.size == len(expected)


VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r.\n", b"\n.\r\r\n"]


@pytest.mark.parametrize("terminator", VARIANTS)
def test_smuggling_end_variants_are_refused_and_end_there(terminator: bytes) -> None:
    smuggled = (b"Subject: one\r\n\r\nbody" + terminator +
                b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n"
                b"Subject: two\r\n\r\nsecond\r\n.\r\n")
    reader = DataReader(max_size=LIMIT)
    consumed = b""
    for piece in lf_pieces(smuggled):
        consumed += piece
        end = reader.feed(piece)
        if end is not None:
            break
    assert end is not None and end.outcome is Outcome.BARE_LINE_END
    assert "bare" in end.reason and end.message == b""
    # It ends at the smuggled terminator: the "second message" is never read as one.
    assert b"MAIL FROM" not in consumed


@given(st.lists(line_text, min_size=1, max_size=10), st.data())
def test_any_bare_line_end_is_never_accepted(lines: list[bytes], data: st.DataObject) -> None:
    wire = stuffed(lines)
    body_end = len(wire) - 3
    at = data.draw(st.integers(min_value=0, max_value=body_end))
    bare = data.draw(st.sampled_from([b"\r", b"\n"]))
    # Inserted where it cannot pair with a neighbour into a CRLF.
    if (bare == b"\n" and wire[at - 1:at] == b"\r") or (bare == b"\r" and wire[at:at + 1] == b"\n"):
        return
    hostile = wire[:at] + bare + wire[at:] + b"\r\n.\r\n"
    end = read(lf_pieces(hostile))
    assert end is not None and end.outcome is Outcome.BARE_LINE_END


def test_over_the_limit_is_too_big_after_the_end() -> None:
    wire = stuffed([b"x" * 100] * 20)
    end = read(lf_pieces(wire), limit=1000)
    assert end is not None and end.outcome is Outcome.TOO_BIG
    assert end.size == 20 * 102 and "over the limit" in end.reason


def test_an_empty_data_section_is_an_empty_message() -> None:
    end = read([b".\r\n"])
    assert end is not None and end.outcome is Outcome.ACCEPTED and end.message == b""


def test_a_dot_line_inside_a_long_line_is_data() -> None:
    stream = [b"abc", b".\r\n", b"..x\r\n", b".\r\n"]
    end = read(stream)
    assert end is not None and end.message == b"abc.\r\n.x\r\n"
