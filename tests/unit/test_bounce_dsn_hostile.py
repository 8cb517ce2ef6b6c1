"""Hostile input to the bounce parser: whatever the bytes, parse_bounce returns a typed
result (a report or an ignore reason) within a generous memory bound.

Time is printed (run with -s), not asserted: on a shared machine a wall-clock bound
is noise. A blow-up shows as the parser's own limits (lines, parts, depth,
recipients) not holding, which the results below assert, or as memory.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_limits import (
    MAX_INPUT_BYTES,
    MAX_LINES,
    MAX_MIME_PARTS,
    MAX_NESTING_DEPTH,
    MAX_RECIPIENTS,
    MAX_TOP_HEADER_LINES,
)
from quiver.bounce.dsn_types import BounceReport, Ignored, IgnoreReason, ParseResult

PEAK_BYTES_BOUND = 200 * 1024 * 1024

HEAD = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: b-tok.k1@bounces.example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n")
STATUS = (b"Content-Type: message/delivery-status\r\n\r\n"
          b"Reporting-MTA: dns; mx.example.org\r\n\r\n"
          b"Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
          b"Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n")


def measured(name: str, build: Callable[[], bytes]) -> ParseResult:
    raw = build()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = parse_bounce(raw)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outcome = (result.reason.value if isinstance(result, Ignored)
               else f"report of {len(result.recipients)}")
    print(f"\n{name}: {len(raw):,} bytes -> {outcome} in {elapsed:.3f} s, "
          f"peak {peak / 2**20:.1f} MiB (traced)")
    assert peak < PEAK_BYTES_BOUND
    return result


def report(*, padding: bytes = b"") -> bytes:
    return (HEAD + b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"'
            b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n--b\r\n" + STATUS
            + b"\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: news@example.com\r\n"
            b"Message-ID: <m1@example.com>\r\n\r\n" + padding + b"\r\n--b--\r\n")


def test_a_dsn_just_under_the_size_limit_is_parsed() -> None:
    line = b"x" * 76 + b"\r\n"
    padding = line * ((MAX_INPUT_BYTES - 2048) // len(line))
    result = measured("10 MB DSN (under the limit)", lambda: report(padding=padding))
    assert isinstance(result, BounceReport)
    assert result.recipients[0].recipient == "ann@example.org"
    assert result.original is not None and result.original.message_id == "<m1@example.com>"


def test_a_dsn_over_the_size_limit_is_refused_unparsed() -> None:
    padding = b"y" * (MAX_INPUT_BYTES + 1)
    result = measured("10 MB + 1 DSN", lambda: report(padding=padding))
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_LARGE


def test_ten_thousand_mime_parts() -> None:
    def build() -> bytes:
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(10_000))
        return (HEAD + b'Content-Type: multipart/report; report-type=delivery-status; '
                b'boundary="b"\r\n\r\n' + parts + b"--b\r\n" + STATUS + b"--b--\r\n")
    result = measured("10,000 MIME parts", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_ten_thousand_parts_without_content_type_fields() -> None:
    # Parts without a Content-Type are not counted before parsing; the walk counts them.
    def build() -> bytes:
        parts = b"".join(b"--b\r\nX-N: 1\r\n\r\npart\r\n" for _ in range(10_000))
        return (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                + parts + b"--b--\r\n")
    result = measured("10,000 untyped MIME parts", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_a_million_bare_delimiters() -> None:
    # 8 MB of "--b" lines: parts with no fields at all, refused while parsing.
    def build() -> bytes:
        return (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                + b"--b\r\n\r\n" * 1_200_000 + b"--b--\r\n")
    result = measured("1,200,000 bare MIME delimiters", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def nested(depth: int) -> bytes:
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n'.encode()
        for i in range(depth))
    closing = b"".join(f"\r\n--n{i}--\r\n".encode() for i in reversed(range(depth)))
    return HEAD + opening + STATUS + closing


def test_nesting_depth_100() -> None:
    result = measured("nesting depth 100", lambda: nested(100))
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_nesting_within_the_limit_is_parsed() -> None:
    result = measured(f"nesting depth {MAX_NESTING_DEPTH - 1}",
                      lambda: nested(MAX_NESTING_DEPTH - 1))
    assert isinstance(result, BounceReport)


def test_nesting_of_returned_messages() -> None:
    def build() -> bytes:
        return HEAD + b"Content-Type: message/rfc822\r\n\r\n" * 150 + b"\r\nbody\r\n"
    result = measured("150 nested message/rfc822", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_header_flood_at_the_top() -> None:
    def build() -> bytes:
        flood = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 40) for i in range(100_000))
        return HEAD + flood + b"\r\nbody\r\n"
    result = measured("100,000 top-level header fields", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX
    assert MAX_TOP_HEADER_LINES < 100_000


def test_one_huge_header_field() -> None:
    def build() -> bytes:
        return HEAD + b"Subject: " + b"a" * (8 * 1024 * 1024) + b"\r\n\r\nbody\r\n"
    result = measured("one 8 MB header field", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_header_flood_inside_the_returned_message() -> None:
    def build() -> bytes:
        flood = b"".join(b"Received: from h%d by mx\r\n" % i for i in range(50_000))
        return report(padding=b"").replace(b"From: news@example.com\r\n",
                                           flood + b"From: news@example.com\r\n")
    result = measured("50,000 fields in the returned message", build)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def returned(inner: bytes) -> bytes:
    return (HEAD + b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"'
            b"\r\n\r\n--b\r\n" + STATUS + b"\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            + inner + b"\r\n--b--\r\n")


def test_ten_megabytes_of_short_lines() -> None:
    # The email package's cost is per line: refused before parsing.
    floods = {
        "10 MB of header fields in the returned message": b"X: y\r\n" * 1_700_000,
        "10 MB of continuation lines": b"X: y\r\n" + b" y\r\n" * 2_500_000,
        "10 MB of empty lines": b"From: a@b\r\n\r\n" + b"\r\n" * 5_000_000,
        "10 MB of bare CRs": b"From: a@b\r\n\r\n" + b"\r" * 10_000_000,
    }
    for name, inner in floods.items():
        result = measured(name, lambda inner=inner: returned(inner))
        assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX


def test_short_lines_just_under_the_line_limit() -> None:
    n = MAX_LINES - 100
    cases = {
        f"{n:,} continuation lines": b"X: y\r\n" + b" y\r\n" * n + b"\r\nbody",
        f"{n:,} empty body lines": b"From: a@b\r\n\r\n" + b"\r\n" * n,
    }
    for name, inner in cases.items():
        result = measured(name, lambda inner=inner: returned(inner))
        assert isinstance(result, BounceReport)


def test_a_megabyte_long_line_in_a_text_bounce() -> None:
    def build() -> bytes:
        body = (b"This is the mail system at host mx.example.org.\r\n\r\n<ann@example.org>: "
                + b"a@b.c " * 200_000 + b"\r\n")
        return HEAD + b"\r\n" + body
    result = measured("1 MB line in a text bounce", build)
    assert isinstance(result, BounceReport | Ignored)


def test_text_bounce_floods() -> None:
    intro = HEAD + b"\r\nThis is the mail system at host mx.example.org.\r\n\r\n"
    distinct = b"".join(b"<u%d@example.org>: 550 5.1.1 unknown\r\n\r\n" % i
                        for i in range(70_000))
    result = measured("70,000 distinct recipients in a text bounce", lambda: intro + distinct)
    assert isinstance(result, BounceReport)
    assert len(result.recipients) == MAX_RECIPIENTS
    same = b"<ann@example.org>: 550 5.1.1 unknown\r\n\r\n" * 70_000
    result = measured("one recipient named 70,000 times", lambda: intro + same)
    assert isinstance(result, BounceReport) and len(result.recipients) == 1
    copy = (intro + b"<ann@example.org>: 550 5.1.1 unknown\r\n\r\n"
            b"--- Below this line is a copy of the message.\r\n" + b"no field here\r\n" * 100_000)
    result = measured("100,000 lines after the copy marker", lambda: copy)
    assert isinstance(result, BounceReport)


def test_invalid_charsets_and_encodings() -> None:
    def build() -> bytes:
        return (HEAD.replace(b"Subject: Undelivered Mail Returned to Sender",
                             b"Subject: =?x-nope?Q?=FF=FE?= =?utf-8?B?####?= =?rot13?Q?nop?=")
                + b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"'
                b"\r\n\r\n--b\r\nContent-Type: text/plain; charset*=x-evil''%FF\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n"
                b"--b\r\nContent-Type: text/plain; charset=rot13\r\n"
                b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n#$$$\r\nend\r\n"
                b"--b\r\nContent-Type: text/plain; charset=utf-16\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=FF=FE=00=D8\r\n"
                b"--b\r\n" + STATUS + b"--b--\r\n")
    result = measured("invalid charsets and encodings", build)
    assert isinstance(result, BounceReport)
    assert result.recipients[0].status == "5.1.1"


_HEADER_NAMES = st.sampled_from([
    "Content-Type", "Content-Transfer-Encoding", "From", "Subject", "Auto-Submitted",
    "Final-Recipient", "Action", "Status", "Diagnostic-Code", "X-Autoreply", "Precedence"])
_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "multipart/report; report-type=delivery-status; boundary=b",
        "message/delivery-status", "message/rfc822", "text/rfc822-headers",
        "multipart/mixed; boundary=b", "text/plain; charset=x-bad", "base64",
        "quoted-printable", "rfc822; ann@example.org", "failed", "delayed", "5.1.1",
        "smtp; 550 5.1.1 user unknown", "auto-replied", "=?utf-8?B?AAAA?=",
        "=?x-bad?Q?=FF?="]))
_LINES = st.one_of(
    st.tuples(_HEADER_NAMES, _VALUES).map(lambda nv: f"{nv[0]}: {nv[1]}"),
    st.sampled_from(["", "--b", "--b--", " continued", "<ann@example.org>:",
                     "This is the mail system at host mx.", "Remote host said: 550 5.1.1 no",
                     "Hi. This is the qmail-send program", "--- Below this line is a copy"]),
    st.text(max_size=60))


@settings(max_examples=400)
@given(st.lists(_LINES, max_size=60), st.sampled_from(["\r\n", "\n", "\r"]))
def test_generated_mime_never_raises(lines: list[str], newline: str) -> None:
    raw = newline.join(lines).encode("utf-8", "surrogatepass")
    result = parse_bounce(raw)
    assert isinstance(result, BounceReport | Ignored)


@settings(max_examples=300)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_bounce(raw), BounceReport | Ignored)


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_inside_a_report_never_raise(noise: bytes) -> None:
    raw = report(padding=noise).replace(b"Status: 5.1.1", b"Status: " + noise[:50])
    assert isinstance(parse_bounce(raw), BounceReport | Ignored)


def test_parts_limit_is_the_documented_constant() -> None:
    # A report with exactly the allowed number of Content-Type fields is still parsed.
    def build() -> bytes:
        filler = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
                          for _ in range(MAX_MIME_PARTS - 3))
        return (HEAD + b'Content-Type: multipart/report; report-type=delivery-status; '
                b'boundary="b"\r\n\r\n' + filler + b"--b\r\n" + STATUS + b"--b--\r\n")
    assert isinstance(measured(f"{MAX_MIME_PARTS - 1} parts", build), BounceReport)
