"""The local MX's after-accept reports, parsed back with the project's own parsers:
a DSN (quiver.bounce) and a DKIM-signed ARF report (quiver.feedback)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from arf_signing import TxtTable, new_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import BounceReport
from quiver.devstack.servers.mx_reports import (
    RETURNED_HEADER_LIMIT,
    WHOLE_ORIGINAL_LIMIT,
    Delivery,
    Reporter,
    arf_for,
    dsn_for,
)
from quiver.devstack.servers.mx_script import BEHAVIOURS, Action, behaviour_for
from quiver.feedback.arf import parse_report
from quiver.feedback.dkim_check import verify_report_dkim
from quiver.feedback.report import FeedbackReport
from quiver.feedback.trust import decide
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter

RETURN_PATH = "b-QT1.aGVsbG8.c2ln@bounces.news.quiver-demo.test"
ARRIVED = dt.datetime(2026, 3, 3, 9, 12, 42, tzinfo=dt.UTC)
NOW = ARRIVED + dt.timedelta(seconds=3)
DELIVERY = Delivery(mail_from=RETURN_PATH, helo="out-1.quiver-demo.test",
                    peer_ip="127.0.0.3", by="mx.alpha.test", arrived=ARRIVED)
ORIGINAL = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=news.quiver-demo.test; s=q1;\r\n"
    b"\th=from:to:subject; bh=AAAA; b=BBBB\r\n"
    b"From: Quiver News <news@news.quiver-demo.test>\r\n"
    b"To: someone@alpha.test\r\n"
    b"Subject: Your weekly news\r\n"
    b"Date: Tue, 03 Mar 2026 09:12:40 +0000\r\n"
    b"Message-ID: <m-7f3a9c@news.quiver-demo.test>\r\n"
    b"Quiver-Id: t1.m-7f3a9c.sig\r\n"
    b"List-Unsubscribe: <https://u.quiver-demo.test/u/T0KEN>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"caf\xc3\xa9 news.\r\n"
)
KEY = new_key("reports.alpha.test", "s2048")
REPORTER = Reporter(domain=KEY.domain, address="fbl@reports.alpha.test",
                    selector=KEY.selector, private_key=KEY.private_pem)
FBL = "fbl@fbl.quiver-demo.test"


def only_crlf(raw: bytes) -> bool:
    return re.search(rb"(?<!\r)\n|\r(?!\n)", raw) is None


def bounce(raw: bytes) -> BounceReport:
    report = parse_bounce(raw)
    assert isinstance(report, BounceReport), report
    return report


def complaint(raw: bytes) -> FeedbackReport:
    report = parse_report(raw)
    assert isinstance(report, FeedbackReport), report
    return report


@pytest.mark.parametrize(("address", "action"), [
    ("asyncbounce-12@alpha.test", Action.ASYNC_BOUNCE),
    ("complain-1@alpha.test", Action.COMPLAIN),
    ("unsub-1@alpha.test", Action.ACCEPT),
])
def test_the_script_table_names_the_after_accept_behaviours(address: str, action: Action) -> None:
    behaviour = behaviour_for(address)
    assert behaviour in BEHAVIOURS
    assert (behaviour.action, behaviour.reply) == (action, "")


def test_dsn_parses_as_a_hard_bounce_of_the_recipient() -> None:
    raw = dsn_for(original=ORIGINAL, recipients=["asyncbounce-12@alpha.test"],
                  delivery=DELIVERY, now=NOW)
    assert only_crlf(raw)
    report = bounce(raw)
    assert report.format == "rfc3464"
    assert report.reporting_mta == "mx.alpha.test"
    assert report.addressed_to == RETURN_PATH
    assert report.return_path_local == "b-QT1.aGVsbG8.c2ln"
    [failed] = report.recipients
    assert failed.recipient == "asyncbounce-12@alpha.test"
    assert failed.original_recipient == "asyncbounce-12@alpha.test"
    assert failed.status == "5.1.1"
    assert failed.diagnostic == (
        "smtp; 550 5.1.1 <asyncbounce-12@alpha.test>: mailbox unavailable")
    assert failed.classification.kind == "hard"
    # The returned header is the original's as stored, Return-Path prepended.
    assert report.original is not None
    assert report.original.get("Return-Path") == f"<{RETURN_PATH}>"
    assert report.original_sender == RETURN_PATH
    assert report.original.message_id == "<m-7f3a9c@news.quiver-demo.test>"
    assert report.original.quiver_id == "t1.m-7f3a9c.sig"


def test_dsn_has_the_shape_postfix_gives_it() -> None:
    raw = dsn_for(original=ORIGINAL, recipients=["asyncbounce-1@alpha.test"],
                  delivery=DELIVERY, now=NOW)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\nFrom: MAILER-DAEMON@mx.alpha.test (Mail Delivery System)\r\n" in head
    assert f"\r\nTo: {RETURN_PATH}\r\n".encode() in head
    assert b"\r\nAuto-Submitted: auto-replied\r\n" in head
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in head
    assert b"Reporting-MTA: dns; mx.alpha.test\r\n" in body
    assert b"Received-From-MTA: dns; out-1.quiver-demo.test\r\n" in body
    assert b"Arrival-Date: Tue, 03 Mar 2026 09:12:42 +0000\r\n" in body
    assert b"Content-Type: text/rfc822-headers\r\n" in body
    # Headers only: the original's body does not come back.
    assert b"caf\xc3\xa9 news." not in raw


def test_one_dsn_names_every_failed_recipient_of_the_transaction() -> None:
    rcpts = ["asyncbounce-1@alpha.test", "asyncbounce-2@alpha.test"]
    report = bounce(dsn_for(original=ORIGINAL, recipients=rcpts, delivery=DELIVERY, now=NOW))
    assert [r.recipient for r in report.recipients] == rcpts
    assert {r.classification.kind for r in report.recipients} == {"hard"}


def test_dsn_of_bare_lf_original_with_8bit_header_is_crlf_and_8bit() -> None:
    original = b"From: Jos\xc3\xa9 <jose@news.quiver-demo.test>\nSubject: hi\n\nbody\n"
    raw = dsn_for(original=original, recipients=["asyncbounce-1@alpha.test"],
                  delivery=DELIVERY, now=NOW)
    assert only_crlf(raw)
    assert b"Content-Transfer-Encoding: 8bit\r\n" in raw
    assert bounce(raw).recipients[0].recipient == "asyncbounce-1@alpha.test"


def test_dsn_returns_at_most_the_returned_header_limit() -> None:
    flood = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 60) for i in range(2000))
    raw = dsn_for(original=flood + ORIGINAL, recipients=["asyncbounce-1@alpha.test"],
                  delivery=DELIVERY, now=NOW)
    returned = raw.split(b"Content-Type: text/rfc822-headers\r\n", 1)[1]
    assert RETURNED_HEADER_LIMIT - 100 < len(returned) < RETURNED_HEADER_LIMIT + 200
    assert bounce(raw).recipients[0].classification.kind == "hard"


def test_a_bounce_is_never_bounced() -> None:
    null_sender = Delivery(mail_from="", helo=None, peer_ip="127.0.0.1", by="mx.alpha.test",
                           arrived=ARRIVED)
    with pytest.raises(ValueError, match="null sender"):
        dsn_for(original=ORIGINAL, recipients=["a@alpha.test"], delivery=null_sender, now=NOW)
    with pytest.raises(ValueError, match="at least one recipient"):
        dsn_for(original=ORIGINAL, recipients=[], delivery=DELIVERY, now=NOW)


def test_arf_parses_as_a_complaint_naming_the_recipient() -> None:
    raw = arf_for(original=ORIGINAL, rcpt="complain-1@alpha.test", delivery=DELIVERY,
                  reporter=REPORTER, fbl_address=FBL, now=NOW)
    assert only_crlf(raw)
    report = complaint(raw)
    assert report.shape == "arf"
    assert (report.feedback_type, report.version) == ("abuse", "1")
    assert report.user_agent is not None
    assert report.recipients == ("complain-1@alpha.test",)
    assert report.original_mail_from == RETURN_PATH
    assert report.arrival_date == "Tue, 03 Mar 2026 09:12:42 +0000"
    assert report.source_ip == "127.0.0.3"
    assert report.reported_domains == ("news.quiver-demo.test",)
    assert report.reporting_mta == "dns; mx.alpha.test"
    assert report.report_from == "<fbl@reports.alpha.test>"
    original = report.original
    assert original.form == "message"
    assert original.return_path == RETURN_PATH
    assert original.message_id == "<m-7f3a9c@news.quiver-demo.test>"
    assert original.list_unsubscribe == "<https://u.quiver-demo.test/u/T0KEN>"
    assert original.id_headers == (("Quiver-Id", "t1.m-7f3a9c.sig"),)
    assert "abuse report" in report.human_text
    # The whole original comes back, body included.
    assert ORIGINAL.split(b"\r\n\r\n", 1)[1] in raw


def test_arf_signature_verifies_and_a_trusted_reporter_acts_on_it() -> None:
    raw = arf_for(original=ORIGINAL, rcpt="complain-1@alpha.test", delivery=DELIVERY,
                  reporter=REPORTER, fbl_address=FBL, now=NOW)
    dns = TxtTable(KEY)
    verdict = verify_report_dkim(raw, dnsfunc=dns)
    assert (verdict.status, verdict.domain) == ("verified", "reports.alpha.test")
    assert dns.asked == ["s2048._domainkey.reports.alpha.test"]
    signature = raw.split(b"\r\n\r\n", 1)[0].split(b"DKIM-Signature:", 1)[1]
    signed = re.search(rb"h=([^;]*);", signature)
    assert signed is not None
    names = {n.strip().lower() for n in signed.group(1).replace(b"\r\n", b"").split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id"} <= names
    policy = FeedbackPolicy(trusted_reporters=(TrustedReporter("alpha.test"),),
                            own_domains=("quiver-demo.test",))
    decision = decide(complaint(raw), verdict, policy=policy,
                      envelope_sender="fbl@reports.alpha.test")
    assert (decision.action, decision.reason) == ("act", "trusted_dkim")


def test_a_changed_report_no_longer_verifies() -> None:
    raw = arf_for(original=ORIGINAL, rcpt="complain-1@alpha.test", delivery=DELIVERY,
                  reporter=REPORTER, fbl_address=FBL, now=NOW)
    tampered = raw.replace(b"Original-Rcpt-To: <complain-1@", b"Original-Rcpt-To: <victim-1@")
    assert tampered != raw
    verdict = verify_report_dkim(tampered, dnsfunc=TxtTable(KEY))
    assert verdict.status == "failed" and "body hash mismatch" in verdict.reason


def test_a_reporter_without_a_key_sends_unsigned() -> None:
    unsigned = Reporter(domain="reports.alpha.test", address="fbl@reports.alpha.test")
    raw = arf_for(original=ORIGINAL, rcpt="complain-1@alpha.test", delivery=DELIVERY,
                  reporter=unsigned, fbl_address=FBL, now=NOW)
    assert b"DKIM-Signature" not in raw.split(b"\r\n\r\n", 1)[0]
    assert verify_report_dkim(raw, dnsfunc=TxtTable(KEY)).status == "none"
    assert complaint(raw).recipients == ("complain-1@alpha.test",)
    with pytest.raises(ValueError, match="go together"):
        Reporter(domain="reports.alpha.test", address="fbl@reports.alpha.test", selector="s")


def test_arf_of_a_large_original_carries_its_header_only() -> None:
    big = ORIGINAL + b"line of a large newsletter body\r\n" * (WHOLE_ORIGINAL_LIMIT // 30)
    raw = arf_for(original=big, rcpt="complain-1@alpha.test", delivery=DELIVERY,
                  reporter=REPORTER, fbl_address=FBL, now=NOW)
    assert len(raw) < 100_000
    report = complaint(raw)
    assert report.original.form == "headers"
    assert report.original.return_path == RETURN_PATH
    assert verify_report_dkim(raw, dnsfunc=TxtTable(KEY)).status == "verified"


def test_reported_domain_falls_back_to_the_envelope_sender() -> None:
    raw = arf_for(original=b"Subject: no From field\r\n\r\nbody\r\n", rcpt="complain-1@alpha.test",
                  delivery=DELIVERY, reporter=REPORTER, fbl_address=FBL, now=NOW)
    assert complaint(raw).reported_domains == ("bounces.news.quiver-demo.test",)


@pytest.mark.parametrize("field", ["rcpt", "helo", "mail_from", "fbl"])
@pytest.mark.parametrize("bad", ["\r\nBcc: victim@elsewhere.test", "\nX-Injected: 1", "a\x00b"])
def test_header_injection_through_any_value_is_refused(field: str, bad: str) -> None:
    rcpt = "complain-1@alpha.test" + (bad if field == "rcpt" else "")
    delivery = Delivery(
        mail_from=RETURN_PATH + (bad if field == "mail_from" else ""),
        helo="out-1.quiver-demo.test" + (bad if field == "helo" else ""),
        peer_ip="127.0.0.3", by="mx.alpha.test", arrived=ARRIVED)
    fbl = FBL + (bad if field == "fbl" else "")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        arf_for(original=ORIGINAL, rcpt=rcpt, delivery=delivery, reporter=REPORTER,
                fbl_address=fbl, now=NOW)
    if field != "fbl":
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            dsn_for(original=ORIGINAL, recipients=[rcpt], delivery=delivery, now=NOW)


def test_naive_dates_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        dsn_for(original=ORIGINAL, recipients=["a@alpha.test"], delivery=DELIVERY,
                now=dt.datetime(2026, 3, 3, 9, 0))


LOCAL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-", min_size=1, max_size=30)
ORIGINALS = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from([
        b"From: a@news.quiver-demo.test", b"Subject: x", b"\t folded", b"", b"--",
        b"--=_quiver-mx-", b"Content-Type: multipart/mixed; boundary=x", b"--x", b".",
        b"\xff\xfe", b"Content-Type: message/delivery-status", b"Action: delayed",
        b"Final-Recipient: rfc822; other@elsewhere.test", b"\r", b"\n",
    ]), max_size=40).map(b"\r\n".join),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=ORIGINALS, local=LOCAL)
def test_any_original_gives_a_dsn_that_bounces_exactly_its_recipient(
    original: bytes, local: str
) -> None:
    rcpt = f"asyncbounce-{local}@alpha.test"
    raw = dsn_for(original=original, recipients=[rcpt], delivery=DELIVERY, now=NOW)
    assert only_crlf(raw)
    report = bounce(raw)
    assert [(r.recipient, r.classification.kind) for r in report.recipients] == [(rcpt, "hard")]
    assert report.addressed_to == RETURN_PATH


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original=ORIGINALS, local=LOCAL)
def test_any_original_gives_an_arf_report_naming_exactly_its_recipient(
    original: bytes, local: str
) -> None:
    rcpt = f"complain-{local}@alpha.test"
    unsigned = Reporter(domain="reports.alpha.test", address="fbl@reports.alpha.test")
    raw = arf_for(original=original, rcpt=rcpt, delivery=DELIVERY, reporter=unsigned,
                  fbl_address=FBL, now=NOW)
    assert only_crlf(raw)
    report = complaint(raw)
    assert (report.feedback_type, report.recipients) == ("abuse", (rcpt,))
    assert report.original_mail_from == RETURN_PATH
    assert report.original.return_path == RETURN_PATH
