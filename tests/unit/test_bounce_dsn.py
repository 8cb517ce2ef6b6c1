"""The bounce parser's fields and rules, case by case (the fixture table covers formats)."""

from __future__ import annotations

from pathlib import Path

from quiver.bounce import Classifier
from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_fields import address, mta_name, parse_blocks, split_diagnostic
from quiver.bounce.dsn_limits import MAX_TOP_HEADER_LINES
from quiver.bounce.dsn_types import BounceReport, Ignored, IgnoreReason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bounces"


def parsed(name: str) -> BounceReport:
    result = parse_bounce((FIXTURES / name).read_bytes())
    assert isinstance(result, BounceReport), result
    return result


def test_blocks_unfold_continuations_and_keep_the_first_of_a_field() -> None:
    blocks = parse_blocks(
        "Reporting-MTA: dns; mx.example\n\n"
        "Final-Recipient: rfc822;\n    ann@example.org\nAction: failed\nAction: delivered\n"
        "Diagnostic-Code: smtp; 550 5.1.1 first\n\tsecond line\n\n\n"
        "Final-Recipient: rfc822; bob@example.org\nnot a field\n Status: 5.2.2\n")
    assert blocks == [
        {"reporting-mta": "dns; mx.example"},
        {"final-recipient": "rfc822; ann@example.org", "action": "failed",
         "diagnostic-code": "smtp; 550 5.1.1 first second line"},
        {"final-recipient": "rfc822; bob@example.org"},
    ]


def test_multi_line_replies_lose_their_repeated_codes() -> None:
    got = split_diagnostic("smtp; 550-5.1.1 The account does not exist.\n 550-5.1.1 Please "
                           "check.\n 550 5.1.1 https://support.example/?p=NoSuchUser - gsmtp")
    assert (got.code, got.enhanced) == (550, "5.1.1")
    assert got.text == ("The account does not exist. Please check. "
                        "https://support.example/?p=NoSuchUser - gsmtp")


def test_diagnostic_without_a_reply_keeps_a_trailing_status() -> None:
    got = split_diagnostic("Sorry, no mailbox here by that name. (#5.1.1)")
    assert (got.code, got.enhanced) == (None, "5.1.1")


def test_addresses_and_mta_names_lose_their_decoration() -> None:
    assert address("rfc822; <Ann@Example.org> (Ann)") == "Ann@Example.org"
    assert address("rfc822;ann@example.org.") == "ann@example.org"
    assert address("rfc822; nobody") is None
    assert mta_name("dns; gmail-smtp-in.l.google.com. (2607:f8b0::1a, the server)") == (
        "gmail-smtp-in.l.google.com")


def test_a_postfix_report_carries_every_field() -> None:
    report = parsed("rfc3464_postfix_user_unknown.eml")
    assert report.reporting_mta == "mx2.example.org"
    assert report.addressed_to == "b-AbC123xYz.k1@bounces.example.com"
    assert report.original_sender == "b-AbC123xYz.k1@bounces.example.com"
    assert report.return_path_local == "b-AbC123xYz.k1"
    (failed,) = report.recipients
    assert failed.action == "failed"
    assert failed.original_recipient == "dana.kowalski@example.org"
    assert failed.remote_mta == "mailstore.example.org"
    assert failed.diagnostic == ("smtp; 550 5.1.1 <dana.kowalski@example.org>: Recipient "
                                 "address rejected: User unknown in virtual mailbox table")
    assert report.original is not None
    assert report.original.get("Subject") == "Your March statement is ready"


def test_envelope_id_and_only_failed_recipients_of_a_mixed_report() -> None:
    report = parsed("rfc3464_relayed_and_failed.eml")
    assert report.envelope_id == "ENV-20260313-0007"
    assert [(r.recipient, r.original_recipient) for r in report.recipients] == [
        ("pavel@example.org", "team@example.org")]


def test_a_failed_and_a_delayed_recipient_report_the_failed_one() -> None:
    raw = (FIXTURES / "rfc3464_postfix_two_recipients.eml").read_bytes().replace(
        b"Action: failed\nStatus: 5.7.1", b"Action: delayed\nStatus: 4.7.1")
    report = parse_bounce(raw)
    assert isinstance(report, BounceReport)
    assert [r.recipient for r in report.recipients] == ["fred@example.edu"]


def test_the_classifier_given_is_the_one_used() -> None:
    rules = Classifier('[[rules]]\nkind = "block"\ncategory = "test-only"\nenhanced = ["5.1.1"]\n')
    report = parse_bounce((FIXTURES / "rfc3464_postfix_user_unknown.eml").read_bytes(),
                          classifier=rules)
    assert isinstance(report, BounceReport)
    assert report.recipients[0].classification.category == "test-only"


def test_encoded_subjects_are_decoded_for_matching() -> None:
    result = parse_bounce((FIXTURES / "ooo_fr.eml").read_bytes())
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.OUT_OF_OFFICE
    assert "Réponse automatique" in result.detail


def test_empty_and_header_only_input() -> None:
    for raw in (b"", b"\r\n\r\n", b"   "):
        result = parse_bounce(raw)
        assert isinstance(result, Ignored) and result.reason is IgnoreReason.MALFORMED
    result = parse_bounce(b"Subject: hello\r\n")
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.NOT_A_BOUNCE


def test_header_line_limit_is_exact() -> None:
    head = b"From: MAILER-DAEMON@mx.example\r\n"
    fits = head + b"X: 1\r\n" * (MAX_TOP_HEADER_LINES - 2) + b"\r\nbody\r\n"
    over = head + b"X: 1\r\n" * MAX_TOP_HEADER_LINES + b"\r\nbody\r\n"
    assert not (isinstance(r := parse_bounce(fits), Ignored)
                and r.reason is IgnoreReason.TOO_COMPLEX)
    result = parse_bounce(over)
    assert isinstance(result, Ignored) and result.reason is IgnoreReason.TOO_COMPLEX
