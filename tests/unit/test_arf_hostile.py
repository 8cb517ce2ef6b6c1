"""Hostile feedback reports: generated MIME and bytes never raise; floods, nesting and
size are refused with a reason, at a cost printed here (time, tracemalloc peak).

Memory peaks are asserted with generous bounds; times are printed, never asserted
(the machine may be busy).
"""

from __future__ import annotations

import base64
import quopri
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from arf_signing import TxtTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.feedback.arf import parse_report
from quiver.feedback.dkim_check import verify_report_dkim
from quiver.feedback.limits import MAX_REPORT_BYTES, MAX_VALUE_CHARS
from quiver.feedback.report import FEEDBACK_TYPES, FeedbackReport, Ignored, ParseResult

FIXTURES = Path(__file__).parent / "arf_fixtures"
MiB = 1024 * 1024
# Far above what a bounded parse needs, far below what an unbounded one would take
# on the inputs below (10,000 part objects, 100,000 header tuples, copies of 10 MB).
PEAK_BOUND = 48 * MiB

HEAD = (b"From: fbl@isp.example.net\r\nTo: fbl@fbl.example.com\r\nSubject: report\r\n"
        b"MIME-Version: 1.0\r\n")
FEEDBACK = (b"--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
            b"User-Agent: T/1\r\nVersion: 1\r\nOriginal-Rcpt-To: <r@isp.example.net>\r\n\r\n")
REPORT_TYPE = b"Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"


def measure(label: str, work: Callable[[], ParseResult]) -> ParseResult:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = work()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outcome = result.reason if isinstance(result, Ignored) else result.shape
    print(f"\n{label}: {outcome} in {elapsed * 1000:.1f} ms, "
          f"tracemalloc peak {peak / MiB:.2f} MiB")
    assert peak < PEAK_BOUND, f"{label}: peak {peak} bytes"
    return result


def report_with_original(original: bytes) -> bytes:
    return (HEAD + REPORT_TYPE + FEEDBACK
            + b"--B\r\nContent-Type: message/rfc822\r\n\r\n" + original + b"\r\n--B--\r\n")


def test_ten_megabytes_is_too_large() -> None:
    raw = report_with_original(b"Message-ID: <big@example.com>\r\n\r\n" + b"x" * (10 * MiB))
    result = measure("10 MB report", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_large"
    verdict = verify_report_dkim(raw, dnsfunc=TxtTable())
    assert verdict.status == "failed" and "not verified" in verdict.reason


def test_ten_thousand_top_level_parts_are_too_complex() -> None:
    parts = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(10_000))
    raw = HEAD + REPORT_TYPE + parts + FEEDBACK + b"--B--\r\n"
    result = measure("10,000 top-level parts", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_complex"
    assert "64 MIME parts" in result.detail


def test_ten_thousand_parts_inside_the_original_are_never_walked() -> None:
    inner = b"".join(b"--I\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(10_000))
    original = (b"Message-ID: <many@example.com>\r\nContent-Type: multipart/mixed; boundary=I"
                b"\r\n\r\n" + inner + b"--I--\r\n")
    result = measure("10,000 parts in the original",
                     lambda: parse_report(report_with_original(original)))
    assert isinstance(result, FeedbackReport)
    assert result.original.message_id == "<many@example.com>"


def nested(depth: int, leaf: bytes) -> bytes:
    body = leaf
    for level in range(depth):
        b = f"N{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
                + body + b"\r\n--" + b + b"--\r\n")
    return body


def test_depth_one_hundred_is_too_complex() -> None:
    raw = HEAD + REPORT_TYPE + b"--B\r\n" + nested(100, b"Content-Type: text/plain\r\n\r\nx") \
        + b"\r\n" + FEEDBACK + b"--B--\r\n"
    result = measure("nesting depth 100", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_complex"
    assert "deeper than" in result.detail


def test_depth_one_hundred_inside_the_original_is_never_walked() -> None:
    original = b"Message-ID: <deep@example.com>\r\n" + nested(100, b"Content-Type: text/plain"
                                                               b"\r\n\r\nx")
    result = measure("nesting depth 100 in the original",
                     lambda: parse_report(report_with_original(original)))
    assert isinstance(result, FeedbackReport)
    assert result.original.message_id == "<deep@example.com>"


@pytest.mark.parametrize("where", ["report", "feedback", "original"])
@pytest.mark.parametrize(("count", "bound"), [
    (5_000, "more than 1000 header fields"),     # small fields: the count bound
    (100_000, "a header block over 262144 bytes"),  # 1.2 MB of them: the byte bound first
])
def test_header_flood_is_too_complex(where: str, count: int, bound: str) -> None:
    flood = b"X-Flood: y\r\n" * count
    if where == "report":
        raw = flood + HEAD + REPORT_TYPE + FEEDBACK + b"--B--\r\n"
    elif where == "feedback":
        raw = (HEAD + REPORT_TYPE + b"--B\r\nContent-Type: message/feedback-report\r\n\r\n"
               b"Feedback-Type: abuse\r\nVersion: 1\r\n" + flood + b"--B--\r\n")
    else:
        raw = report_with_original(b"Message-ID: <f@example.com>\r\n" + flood + b"\r\nx")
    result = measure(f"{count:,} header fields ({where})", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_complex"
    assert bound in result.detail
    if where == "report":
        verdict = verify_report_dkim(raw, dnsfunc=TxtTable())
        assert verdict.status == "failed" and bound in verdict.reason


def test_header_flood_of_one_huge_field_is_too_complex() -> None:
    raw = HEAD + b"X-Huge: " + b"a" * (3 * MiB) + b"\r\n" + REPORT_TYPE + FEEDBACK + b"--B--\r\n"
    result = measure("one 3 MiB header field", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_complex"
    assert "header block over" in result.detail


def test_folded_flood_is_bounded_too() -> None:
    raw = HEAD + b"X-Fold: a\r\n" + b" b\r\n" * 200_000 + REPORT_TYPE + FEEDBACK + b"--B--\r\n"
    result = measure("a field folded 200,000 times", lambda: parse_report(raw))
    assert isinstance(result, Ignored) and result.reason == "too_complex"


def test_a_field_folded_within_the_byte_bound_is_read_and_capped() -> None:
    feedback = FEEDBACK.replace(b"User-Agent: T/1\r\n",
                                b"User-Agent: T/1\r\n" + b" more\r\n" * 30_000)
    raw = HEAD + REPORT_TYPE + feedback + b"--B--\r\n"
    result = measure("a field folded 30,000 times (210 KB)", lambda: parse_report(raw))
    assert isinstance(result, FeedbackReport) and result.user_agent is not None
    assert len(result.user_agent) == MAX_VALUE_CHARS
    assert result.user_agent.startswith("T/1 more more")


def test_largest_accepted_report_costs_a_bounded_amount() -> None:
    original = b"Message-ID: <max@example.com>\r\n\r\n" + b"y" * (MAX_REPORT_BYTES - 4096)
    raw = report_with_original(original)
    assert len(raw) <= MAX_REPORT_BYTES
    result = measure("a report just under the size bound", lambda: parse_report(raw))
    assert isinstance(result, FeedbackReport)


def test_invalid_charsets_and_eight_bit_headers_never_raise() -> None:
    raw = (b"From: =?x-bogus?B?////?= <fbl@isp.example.net>\r\nSubject: \xff\xfe\x80\r\n"
           + REPORT_TYPE
           + b"--B\r\nContent-Type: text/plain; charset=\"idna\"\r\n\r\n\xff\xc3(\r\n"
           + b"--B\r\nContent-Type: message/feedback-report; charset=utf-16\r\n\r\n"
           b"Feedback-Type: abuse\r\nVersion: 1\r\nUser-Agent: \xc3\x28\xa0\xa1\r\n"
           b"Original-Rcpt-To: <\xe9t\xe9@isp.example.net>\r\n"
           + b"--B\r\nContent-Type: text/rfc822-headers; charset=rot13\r\n\r\n"
           b"From: =?utf-8?Q?=ZZ?= <a@example.com>\r\nMessage-ID: <\xff@example.com>\r\n"
           + b"--B--\r\n")
    for charset in ("idna", "punycode", "rot13", "base64", "utf-7", "\x00", "x" * 300):
        variant = raw.replace(b'charset="idna"', b'charset="' + charset.encode() + b'"')
        result = parse_report(variant)
        assert isinstance(result, FeedbackReport)
        assert result.original.message_id == "<\ufffd@example.com>"
        assert result.recipients == ("\ufffdt\ufffd@isp.example.net",)


# --- generated input --------------------------------------------------------------

_TYPES = ["text/plain", "text/html", "message/feedback-report", "message/rfc822",
          "text/rfc822-headers", "application/octet-stream", "message/delivery-status"]
_CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "x-unknown", "idna", "utf-16", "rot13", ""]
_ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", ""]
_FIELDS = ["Feedback-Type", "User-Agent", "Version", "Original-Mail-From", "Original-Rcpt-To",
           "Arrival-Date", "Source-IP", "Reported-Domain", "Reported-URI", "Incidents",
           "Authentication-Results", "Message-ID", "Return-Path", "Quiver-Id",
           "X-HmXmrOriginalRecipient", "List-Unsubscribe"]
_VALUES = st.sampled_from(["abuse", "fraud", "not-spam", "auth-failure", "1", "0.1", "2", "",
                           "<a@b.example>", "x@y", "99", "-1", "\u00e9", "=?bogus?Q?x?="])
_BOUNDARIES = st.sampled_from(["B", "b1", "--x--", "a b", "=_q", "", "\u00e9", "x" * 80])


@st.composite
def field_blocks(draw: st.DrawFn, names: tuple[str, ...] = tuple(_FIELDS)) -> bytes:
    lines = draw(st.lists(st.tuples(st.sampled_from(names), _VALUES | st.text(max_size=12)),
                          max_size=8))
    text = "".join(f"{name}: {value}\r\n" for name, value in lines)
    return text.encode("utf-8", "surrogateescape")


def entity(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kids = draw(children)
        fields = draw(field_blocks())
        if kids:
            boundary = draw(_BOUNDARIES)
            kind = draw(st.sampled_from(["multipart/report; report-type=feedback-report",
                                         "multipart/mixed", "multipart/report"]))
            head = f"Content-Type: {kind}; boundary=\"{boundary}\"\r\n".encode()
            body = b"".join(b"--" + boundary.encode() + b"\r\n" + kid + b"\r\n" for kid in kids)
            if draw(st.booleans()):
                body += b"--" + boundary.encode() + b"--\r\n"
            return fields + head + b"\r\n" + body
        ctype = draw(st.sampled_from(_TYPES))
        head = (f"Content-Type: {ctype}; charset={draw(st.sampled_from(_CHARSETS))}\r\n"
                f"Content-Transfer-Encoding: {draw(st.sampled_from(_ENCODINGS))}\r\n").encode()
        body = draw(field_blocks() | st.binary(max_size=64))
        return fields + head + b"\r\n" + body

    return build()


MIME = st.recursive(entity(st.just([])), lambda inner: entity(st.lists(inner, max_size=4)),
                    max_leaves=12)


def mutate(data: bytes, cuts: list[int], junk: bytes) -> bytes:
    for cut in cuts:
        if data:
            at = cut % len(data)
            data = data[:at] + junk + data[at + 1:]
    return data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(MIME, st.lists(st.integers(min_value=0), max_size=3), st.binary(max_size=4))
def test_generated_mime_never_raises(raw: bytes, cuts: list[int], junk: bytes) -> None:
    for data in (raw, mutate(raw, cuts, junk), raw.replace(b"\r\n", b"\n")):
        result = parse_report(data)
        assert isinstance(result, FeedbackReport | Ignored)
        if isinstance(result, Ignored):
            assert result.detail
        assert verify_report_dkim(data, dnsfunc=TxtTable()).status in ("failed", "none")


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_report(raw), FeedbackReport | Ignored)
    assert verify_report_dkim(raw, dnsfunc=TxtTable()).status in ("failed", "none")


@settings(max_examples=150)
@given(st.sampled_from(sorted(p.name for p in FIXTURES.glob("*.eml"))),
       st.lists(st.integers(min_value=0), min_size=1, max_size=4), st.binary(max_size=6))
def test_mutated_fixtures_never_raise(name: str, cuts: list[int], junk: bytes) -> None:
    raw = mutate((FIXTURES / name).read_bytes(), cuts, junk)
    assert isinstance(parse_report(raw), FeedbackReport | Ignored)
    signed_like = b"DKIM-Signature: v=1; a=rsa-sha256; d=x.example; s=s; h=from; bh=; b=\r\n"
    assert verify_report_dkim(signed_like + raw, dnsfunc=TxtTable()).status == "failed"


# Well-formed reports, generated: each must parse to exactly what was put in, and
# any damage to one must still come back as a report or a reason.

_SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=12)
_ADDRESSES = st.builds(lambda local, domain: f"{local}@{domain}.example", _SAFE, _SAFE)


def encode(body: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(body)
    if cte == "quoted-printable":
        return quopri.encodestring(body)
    return body


@st.composite
def arf_reports(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    # None of MIME's boundaries: an entity may not reuse its container's (RFC 2046 5.1.1).
    boundary = draw(st.sampled_from(["OUTER", "=_outer 1", "----=_Part_1_2.3"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    kind = draw(st.sampled_from(FEEDBACK_TYPES))
    rcpts = draw(st.lists(_ADDRESSES, max_size=5))
    mid = f"<{draw(_SAFE)}@{draw(_SAFE)}.example>"
    extra = draw(field_blocks(tuple(
        f for f in _FIELDS if f not in ("Feedback-Type", "Version", "Original-Rcpt-To"))))
    fields = (f"Feedback-Type: {kind}\nUser-Agent: Gen/1\n"
              f"Version: {draw(st.sampled_from(['1', '0.1']))}\n"
              + "".join(f"Original-Rcpt-To: <{r}>\n" for r in rcpts)).encode()
    # Extra fields, none of the ones asserted on.
    fields += extra.replace(b"\r\n", b"\n")
    human_cte = draw(st.sampled_from(["7bit", "base64", "quoted-printable"]))
    human = draw(st.text(max_size=80)).encode("utf-8", "surrogatepass")
    feedback_cte = draw(st.sampled_from(["7bit", "base64", "quoted-printable"]))
    form = draw(st.sampled_from(["message/rfc822", "text/rfc822-headers"]))
    original = (f"Message-ID: {mid}\nQuiver-Id: v1.{draw(_SAFE)}\n").encode()
    if form == "message/rfc822":
        original += draw(MIME).replace(b"\r\n", b"\n")
    parts = [
        (f"text/plain; charset={draw(st.sampled_from(_CHARSETS)) or 'utf-8'}", human_cte,
         encode(human, human_cte)),
        ("message/feedback-report", feedback_cte, encode(fields, feedback_cte)),
        (form, "7bit", original),
    ]
    body = b"".join(
        f"--{boundary}\nContent-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n".encode()
        + content + b"\n" for ctype, cte, content in parts
    ) + f"--{boundary}--\n".encode()
    raw = (b"From: fbl@gen.example\nMIME-Version: 1.0\n"
           + f'Content-Type: multipart/report; report-type=feedback-report; '
             f'boundary="{boundary}"\n\n'.encode() + body)
    return raw.replace(b"\n", eol), {"type": kind, "rcpts": tuple(rcpts), "mid": mid}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(arf_reports(), st.lists(st.integers(min_value=0), min_size=1, max_size=3),
       st.binary(max_size=4))
def test_generated_reports_parse_to_what_was_put_in(
    generated: tuple[bytes, dict[str, object]], cuts: list[int], junk: bytes,
) -> None:
    raw, want = generated
    result = parse_report(raw)
    assert isinstance(result, FeedbackReport), result
    assert result.feedback_type == want["type"]
    assert result.original_rcpt_to == want["rcpts"]
    assert result.original.message_id == want["mid"]
    damaged = parse_report(mutate(raw, cuts, junk))
    assert isinstance(damaged, FeedbackReport | Ignored)
