"""The reporter's DKIM signature on a feedback report, and what the policy makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from arf_signing import ReporterKey, TxtTable, new_key

from quiver.feedback.arf import parse_report
from quiver.feedback.dkim_check import DkimVerdict, verify_report_dkim
from quiver.feedback.report import FeedbackReport
from quiver.feedback.trust import decide
from quiver.policy import parse_policy
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter
from quiver.routing.txt import TxtLookupError

FIXTURES = Path(__file__).parent / "arf_fixtures"
YAHOO = (FIXTURES / "yahoo-cfl-abuse.eml").read_bytes().replace(b"\n", b"\r\n")
JMRP = (FIXTURES / "jmrp-arf-redacted.eml").read_bytes().replace(b"\n", b"\r\n")
NOT_SPAM = (FIXTURES / "arf-not-spam.eml").read_bytes().replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def yahoo_key() -> ReporterKey:
    return new_key("arf.mail.yahoo.com", "s2048")


@pytest.fixture(scope="module")
def other_key() -> ReporterKey:
    return new_key("evilyahoo.com", "s1")


def test_signed_report_verifies_with_the_signing_domain(yahoo_key: ReporterKey) -> None:
    dns = TxtTable(yahoo_key)
    verdict = verify_report_dkim(yahoo_key.sign(YAHOO), dnsfunc=dns)
    assert verdict == DkimVerdict("verified", "arf.mail.yahoo.com", "signature verified")
    assert dns.asked == ["s2048._domainkey.arf.mail.yahoo.com"]


def test_tampered_body_fails(yahoo_key: ReporterKey) -> None:
    signed = yahoo_key.sign(YAHOO).replace(b"Original-Rcpt-To: reader@yahoo.com",
                                           b"Original-Rcpt-To: victim@yahoo.com")
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    assert verdict.status == "failed" and verdict.domain == "arf.mail.yahoo.com"
    assert "body hash mismatch" in verdict.reason


def test_tampered_signed_header_fails(yahoo_key: ReporterKey) -> None:
    signed = yahoo_key.sign(YAHOO).replace(b"Subject: FW: Your weekly deals",
                                           b"Subject: FW: Your weekly dealz")
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    assert verdict == DkimVerdict("failed", "arf.mail.yahoo.com",
                                  "signature 1: signature did not verify")


def test_unsigned_report_is_none() -> None:
    verdict = verify_report_dkim(JMRP, dnsfunc=TxtTable())
    assert verdict == DkimVerdict("none", None, "no DKIM-Signature field")


def test_unpublished_key_fails_and_says_so(yahoo_key: ReporterKey) -> None:
    verdict = verify_report_dkim(yahoo_key.sign(YAHOO), dnsfunc=TxtTable())
    assert verdict.status == "failed" and verdict.domain == "arf.mail.yahoo.com"
    assert "public key" in verdict.reason


def test_dns_failure_fails_with_the_lookup_error(yahoo_key: ReporterKey) -> None:
    def unreachable(name: bytes, timeout: int = 5) -> bytes | None:
        raise TxtLookupError("TXT s2048._domainkey.arf.mail.yahoo.com: timed out")

    verdict = verify_report_dkim(yahoo_key.sign(YAHOO), dnsfunc=unreachable)
    assert verdict.status == "failed" and "key lookup failed" in verdict.reason


def test_a_second_good_signature_verifies(yahoo_key: ReporterKey, other_key: ReporterKey) -> None:
    # The topmost signature's key is not published; the one below it verifies.
    signed = other_key.sign(yahoo_key.sign(YAHOO))
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    assert verdict.status == "verified" and verdict.domain == "arf.mail.yahoo.com"


def test_garbage_signature_field_fails_without_raising() -> None:
    raw = b"DKIM-Signature: v=1; a=nope; d=; b=\r\n" + YAHOO
    verdict = verify_report_dkim(raw, dnsfunc=TxtTable())
    assert verdict.status == "failed" and verdict.reason


# --- trust: the policy's decision ------------------------------------------------

POLICY = FeedbackPolicy(
    trusted_reporters=(
        TrustedReporter("yahoo.com"),
        TrustedReporter("hotmail.com", require_dkim=False, user_agents=("Hotmail FBL",)),
    ),
    own_domains=("example.com",),
)


def report(raw: bytes) -> FeedbackReport:
    parsed = parse_report(raw)
    assert isinstance(parsed, FeedbackReport)
    return parsed


def test_verified_trusted_reporter_acts(yahoo_key: ReporterKey) -> None:
    signed = yahoo_key.sign(YAHOO)
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    decision = decide(report(signed), verdict, policy=POLICY,
                      envelope_sender="feedback@arf.mail.yahoo.com")
    assert (decision.action, decision.reason, decision.reporter) == (
        "act", "trusted_dkim", "yahoo.com")


def test_verified_but_untrusted_signer_is_kept_only(other_key: ReporterKey) -> None:
    signed = other_key.sign(YAHOO)
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(other_key))
    assert verdict.status == "verified"
    # evilyahoo.com is not under yahoo.com, whatever the envelope claims.
    decision = decide(report(signed), verdict, policy=POLICY,
                      envelope_sender="feedback@arf.mail.yahoo.com")
    assert (decision.action, decision.reason) == ("keep_only", "untrusted_signer")
    assert "evilyahoo.com" in decision.detail


def test_tampered_report_from_a_require_dkim_reporter_is_kept_only(
    yahoo_key: ReporterKey,
) -> None:
    signed = yahoo_key.sign(YAHOO).replace(b"reader@yahoo.com", b"victim@yahoo.com")
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    decision = decide(report(signed), verdict, policy=POLICY,
                      envelope_sender="feedback@arf.mail.yahoo.com")
    assert (decision.action, decision.reason) == ("keep_only", "dkim_failed")
    assert "body hash mismatch" in decision.detail


def test_unsigned_report_trusted_by_envelope_sender_and_user_agent() -> None:
    verdict = verify_report_dkim(JMRP, dnsfunc=TxtTable())
    decision = decide(report(JMRP), verdict, policy=POLICY,
                      envelope_sender="staff@hotmail.com")
    assert (decision.action, decision.reason, decision.reporter) == (
        "act", "trusted_envelope", "hotmail.com")
    assert "DKIM none" in decision.detail


def test_failed_dkim_can_still_be_trusted_by_envelope(other_key: ReporterKey) -> None:
    signed = other_key.sign(JMRP)
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable())  # key not published
    assert verdict.status == "failed"
    decision = decide(report(signed), verdict, policy=POLICY,
                      envelope_sender="staff@mail.hotmail.com")
    assert (decision.action, decision.reason) == ("act", "trusted_envelope")


@pytest.mark.parametrize("sender", ["staff@nothotmail.com", "staff@hotmail.com.evil.test",
                                    None, "no-at-sign"])
def test_unsigned_report_from_elsewhere_is_kept_only(sender: str | None) -> None:
    verdict = verify_report_dkim(JMRP, dnsfunc=TxtTable())
    decision = decide(report(JMRP), verdict, policy=POLICY, envelope_sender=sender)
    assert (decision.action, decision.reason) == ("keep_only", "unsigned")


def test_user_agent_must_match_when_the_entry_names_some() -> None:
    raw = JMRP.replace(b"User-Agent: Hotmail FBL", b"User-Agent: Forged/1.0")
    verdict = verify_report_dkim(raw, dnsfunc=TxtTable())
    decision = decide(report(raw), verdict, policy=POLICY, envelope_sender="staff@hotmail.com")
    assert (decision.action, decision.reason) == ("keep_only", "unsigned")


def test_not_spam_never_acts(yahoo_key: ReporterKey) -> None:
    raw = yahoo_key.sign(NOT_SPAM)
    verdict = verify_report_dkim(raw, dnsfunc=TxtTable(yahoo_key))
    assert verdict.status == "verified"
    decision = decide(report(raw), verdict, policy=POLICY, envelope_sender=None)
    assert (decision.action, decision.reason) == ("keep_only", "type_not_acted_on")


def test_report_about_someone_elses_domain_is_kept_only(yahoo_key: ReporterKey) -> None:
    raw = yahoo_key.sign(YAHOO.replace(b"Reported-Domain: example.com",
                                       b"Reported-Domain: other.example"))
    verdict = verify_report_dkim(raw, dnsfunc=TxtTable(yahoo_key))
    decision = decide(report(raw), verdict, policy=POLICY, envelope_sender=None)
    assert (decision.action, decision.reason) == ("keep_only", "not_our_domain")


def test_no_trusted_reporters_means_nothing_acts(yahoo_key: ReporterKey) -> None:
    signed = yahoo_key.sign(YAHOO)
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    decision = decide(report(signed), verdict, policy=FeedbackPolicy(),
                      envelope_sender="feedback@arf.mail.yahoo.com")
    assert decision.action == "keep_only"


def test_decision_from_a_policy_file(yahoo_key: ReporterKey) -> None:
    policy = parse_policy("""
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[feedback]
act_on = ["abuse", "fraud", "other"]
trusted_reporters = [{ domain = "yahoo.com" }]
""")
    signed = yahoo_key.sign(YAHOO)
    verdict = verify_report_dkim(signed, dnsfunc=TxtTable(yahoo_key))
    decision = decide(report(signed), verdict, policy=policy.feedback, envelope_sender=None)
    assert decision.action == "act"
