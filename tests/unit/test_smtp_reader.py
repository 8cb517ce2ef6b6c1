"""The SMTP reply reader: whole, split and pipelined replies; over-long lines truncated;
everything else is a ReplyError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.smtp.reader import KEPT_TEXT, MAX_LINE, MAX_LINES, ReplyError, ReplyReader

codes = st.integers(200, 599)
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)
replies = st.tuples(codes, st.lists(texts, min_size=1, max_size=5))


def wire(code: int, lines: list[str]) -> bytes:
    out = [f"{code}-{t}\r\n" for t in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
    return "".join(out).encode()


def test_single_and_multiline() -> None:
    reader = ReplyReader()
    assert reader.feed(b"250 2.1.0 Ok\r\n") == [(250, "2.1.0 Ok")]
    assert reader.feed(b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n") == [
        (250, "mx.test\nPIPELINING\nSIZE 1000")]
    assert reader.idle


def test_pipelined_replies_in_one_read() -> None:
    data = b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n250 2.1.5 Ok\r\n354 go\r\n"
    assert ReplyReader().feed(data) == [
        (250, "2.1.0 Ok"), (550, "5.1.1 no"), (250, "2.1.5 Ok"), (354, "go")]


def test_bare_lf_and_code_only_lines() -> None:
    assert ReplyReader().feed(b"220 hi\n250\r\n") == [(220, "hi"), (250, "")]


def test_a_reply_split_across_reads_is_returned_once_complete() -> None:
    reader = ReplyReader()
    assert reader.feed(b"25") == []
    assert not reader.idle
    assert reader.feed(b"0-a\r\n250 b") == []
    assert reader.feed(b"\r\n") == [(250, "a\nb")]


@given(st.lists(replies, min_size=1, max_size=8), st.data())
def test_any_split_of_a_reply_stream_reads_the_same(batch, data) -> None:
    stream = b"".join(wire(code, lines) for code, lines in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = ReplyReader()
    got = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got.extend(reader.feed(stream[last:cut]))
        last = cut
    assert got == [(code, "\n".join(lines)) for code, lines in batch]
    assert reader.idle


@pytest.mark.parametrize("line", [
    b"hello\r\n", b"25\r\n", b"2500 x\r\n", b"250x\r\n", b"150 interim\r\n", b"650 x\r\n",
    b"abc def\r\n", b"\r\n", b" 250 x\r\n", b"2\xd9\xa50 x\r\n",
])
def test_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ReplyError):
        ReplyReader().feed(line)


def test_a_continuation_cannot_change_the_code() -> None:
    with pytest.raises(ReplyError, match="continuation"):
        ReplyReader().feed(b"250-a\r\n550 b\r\n")


@pytest.mark.parametrize("size", [MAX_LINE - 1, MAX_LINE])
def test_longest_line_accepted(size: int) -> None:
    line = b"250 " + b"x" * (size - 4)
    assert ReplyReader().feed(line + b"\r\n")[0][0] == 250


@pytest.mark.parametrize("size", [MAX_LINE + 1, MAX_LINE + 2, 10_000, 1_000_000])
def test_a_line_over_the_limit_keeps_its_code_and_the_first_512_octets(size: int) -> None:
    text = (b"0123456789" * (size // 10 + 1))[: size - 4]
    reader = ReplyReader()
    got = reader.feed(b"250 " + text + b"\r\n354 go\r\n")
    assert got == [(250, text[:KEPT_TEXT].decode()), (354, "go")]
    assert reader.idle


def test_an_over_long_line_is_dropped_as_it_arrives_not_buffered() -> None:
    reader = ReplyReader()
    assert reader.feed(b"550-" + b"x" * MAX_LINE) == []  # no LF yet
    for _ in range(1000):  # 4 MB more of the same line, never held
        assert reader.feed(b"y" * 4096) == []
        assert len(reader._partial) <= 4 + KEPT_TEXT
    assert reader.feed(b"\r\n550 5.1.1 no such user\r\n") == [
        (550, "x" * KEPT_TEXT + "\n5.1.1 no such user")]
    assert reader.idle


def test_an_over_long_line_that_is_not_a_reply_is_still_refused_at_its_end() -> None:
    reader = ReplyReader()
    assert reader.feed(b"garbage " + b"x" * MAX_LINE) == []
    with pytest.raises(ReplyError, match="not an SMTP reply"):
        reader.feed(b"\r\n")


@given(st.lists(st.tuples(codes, st.integers(0, 3 * MAX_LINE)), min_size=1, max_size=6),
       st.data())
def test_any_split_of_a_stream_with_long_lines_reads_the_same(batch, data) -> None:
    stream = b"".join(f"{code} ".encode() + b"t" * size + b"\r\n" for code, size in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = ReplyReader()
    got = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got.extend(reader.feed(stream[last:cut]))
        last = cut
    kept = [(code, "t" * (size if size + 4 <= MAX_LINE else KEPT_TEXT)) for code, size in batch]
    assert got == kept
    assert reader.idle


def test_too_many_continuation_lines() -> None:
    with pytest.raises(ReplyError, match="lines"):
        ReplyReader().feed(b"250-x\r\n" * (MAX_LINES + 1))


def test_non_utf8_text_is_replaced_not_raised() -> None:
    assert ReplyReader().feed(b"550 \xff\xfe bad\r\n") == [(550, "\ufffd\ufffd bad")]


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_only_ever_raise_reply_error(chunks) -> None:
    reader = ReplyReader()
    try:
        for chunk in chunks:
            for code, text in reader.feed(chunk):
                assert 200 <= code <= 599 and isinstance(text, str)
    except ReplyError:
        pass
