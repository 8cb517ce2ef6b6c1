"""Feedback reports written for the project, in one table of expected results.

The RFC 5965 Appendix B examples (B.1 simple, B.2 with the optional fields, written
from the RFC's layout; B.2's original has a blank line after its Received field, as
in the RFC, so its header block ends there), RFC 6591 auth-failure, Yahoo CFL and
Microsoft JMRP shapes (ARF with the recipient redacted; the older "RFC822
Attachment" copy), encodings, and records that are not reports or are broken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quiver.feedback.arf import parse_report
from quiver.feedback.report import FeedbackReport, Ignored, ParseResult

FIXTURES = Path(__file__).parent / "arf_fixtures"

Q = "Quiver-Id"
# file: expected projection (see `project`); keys left out are None / ().
EXPECTED: dict[str, dict[str, Any]] = {
    "rfc5965-b1-simple.eml": dict(
        outcome="arf", type="abuse", version="1", agent="SomeGenerator/1.0",
        form="message", message_id="8787KJKJ3K4J3K4J3K4J3.mail@example.net",
        from_="<somespammer@example.net>",
    ),
    "rfc5965-b2-optional-fields.eml": dict(
        outcome="arf", type="abuse", version="1", agent="SomeGenerator/1.0",
        mail_from="somespammer@example.net", recipients=("user@example.com",),
        arrival="Thu, 8 Mar 2005 14:00:00 EDT", source_ip="192.0.2.1",
        reported_domains=("example.net",),
        reported_uris=("http://example.net/earn_money.html", "mailto:user@example.com"),
        auth_results=("mail.example.com; spf=fail smtp.mail=somespammer@example.com",),
        form="message", from_="<somespammer@example.net>",
    ),
    "rfc6591-auth-failure.eml": dict(
        outcome="arf", type="auth-failure", version="1", agent="FailureReporter/2.3",
        mail_from="b-QT1abc.def@bounces.example.com",
        recipients=("someone@receiver.example.org",),
        arrival="Mon, 2 Nov 2026 07:59:12 +0000", source_ip="192.0.2.10",
        reported_domains=("example.com",),
        auth_results=("receiver.example.org; dkim=fail (body hash mismatch) "
                      "header.d=example.com header.s=q2026",),
        form="headers", message_id="<m-42@example.com>",
        return_path="b-QT1abc.def@bounces.example.com",
        ids=((Q, "v1.msg-42.someone%40receiver.example.org.sig"),),
        from_="News <news@example.com>",
        auth_failure=("bodyhash", "delivered", "example.com", "q2026"),
    ),
    "yahoo-cfl-abuse.eml": dict(
        outcome="arf", type="abuse", version="0.1", agent="Yahoo!-Mail-Feedback/2.0",
        mail_from="b-QT1.aGVsbG8.c2ln@bounces.example.com", recipients=("reader@yahoo.com",),
        arrival="Tue, 3 Nov 2026 10:14:40 +0000", reported_domains=("example.com",),
        auth_results=("mta4021.mail.gq1.yahoo.com  from=example.com; domainkeys=neutral "
                      "(no sig);  from=example.com; dkim=pass (ok)",),
        form="message", message_id="<deals-20261103-77@example.com>",
        return_path="b-QT1.aGVsbG8.c2ln@bounces.example.com",
        ids=((Q, "v1.deals-77.cmVhZGVy.sig"),),
        unsubscribe="<https://u.example.com/u/T0KEN>, <mailto:unsub-T0KEN@example.com>",
        from_="Example Deals <deals@example.com>",
    ),
    "jmrp-arf-redacted.eml": dict(
        outcome="arf", type="abuse", version="0.1", agent="Hotmail FBL",
        mail_from="b-QT1.jmrp.c2ln@bounces.example.com",
        # No Original-Rcpt-To; To is "[redacted]": the recipient comes from
        # X-HmXmrOriginalRecipient.
        recipients=("reader@outlook.com",),
        arrival="Wed, 04 Nov 2026 11:58:21 -0800", source_ip="198.51.100.25",
        form="message", message_id="<deals-20261104-91@example.com>",
        return_path="b-QT1.jmrp.c2ln@bounces.example.com",
        ids=((Q, "v1.deals-91.cmVhZGVy.sig"),),
        unsubscribe="<https://u.example.com/u/T1KEN>",
        from_="Example Deals <deals@example.com>",
    ),
    "jmrp-attachment.eml": dict(
        outcome="jmrp-attachment", type="abuse", recipients=("reader2@hotmail.com",),
        form="message", message_id="<deals-20261105-13@example.com>",
        return_path="b-QT1.att.c2ln@bounces.example.com",
        ids=((Q, "v1.deals-13.cmVhZGVyMg.sig"),),
        from_="Example Deals <deals@example.com>",
    ),
    "arf-base64-parts.eml": dict(
        outcome="arf", type="abuse", version="1", agent="ISP-FBL/3.1",
        recipients=("customer@isp.example.net",), form="message",
        message_id="<b64-1@example.com>", return_path="b-b64@bounces.example.com",
        ids=((Q, "v1.b64-1.sig"),), from_="news@example.com",
    ),
    "arf-fraud-many-rcpts.eml": dict(
        outcome="arf", type="fraud", version="1", agent="MBP-Reporter/1.4",
        mail_from="b-frd@bounces.example.com",
        recipients=("a@mbp.example.org", "b@mbp.example.org", "c@mbp.example.org"),
        source_ip="2001:db8::25", incidents=3,
        reported_uris=("https://login.example.com.attacker.example/",),
        form="headers", message_id="<frd-3@example.com>", from_="Bank <alerts@example.com>",
    ),
    "arf-not-spam.eml": dict(
        outcome="arf", type="not-spam", version="1", agent="MBP-Reporter/1.4",
        recipients=("d@mbp.example.org",), form="headers", message_id="<ns-1@example.com>",
        from_="news@example.com",
    ),
    "arf-unknown-type.eml": dict(
        outcome="arf", type="other", version="1", agent="MBP-Reporter/1.4",
        recipients=("e@mbp.example.org",), form="absent",
    ),
    "arf-alternative-qp.eml": dict(
        outcome="arf", type="abuse", version="1", agent="ISP2/1.0",
        mail_from="b-alt@bounces.example.com", recipients=("f@isp2.example.net",),
        form="message", message_id="<alt-1@example.com>",
        return_path="b-alt@bounces.example.com", from_="news@example.com",
    ),
    "arf-no-original.eml": dict(
        outcome="arf", type="abuse", version="1", agent="SmallFBL/0.9",
        mail_from="b-noorig@bounces.example.com", recipients=("g@small.example.net",),
        reported_domains=("example.com",), form="absent",
    ),
    "dsn-delivery-status.eml": dict(outcome="ignored:not_arf"),
    "plain-forward.eml": dict(outcome="ignored:not_arf"),
    "mixed-without-report.eml": dict(outcome="ignored:not_arf"),
    "arf-missing-feedback-part.eml": dict(outcome="ignored:malformed"),
    "arf-missing-feedback-type.eml": dict(outcome="ignored:malformed"),
    "arf-no-boundary.eml": dict(outcome="ignored:malformed"),
    "arf-version-2.eml": dict(outcome="ignored:unsupported_version"),
}

_DEFAULTS: dict[str, Any] = dict(
    type=None, version=None, agent=None, mail_from=None, recipients=(), arrival=None,
    source_ip=None, reported_domains=(), reported_uris=(), auth_results=(), incidents=None,
    form=None, message_id=None, return_path=None, ids=(), unsubscribe=None, from_=None,
    auth_failure=None,
)


def project(result: ParseResult) -> dict[str, Any]:
    if isinstance(result, Ignored):
        return {"outcome": f"ignored:{result.reason}"}
    assert isinstance(result, FeedbackReport)
    auth = result.auth
    return dict(
        outcome=result.shape, type=result.feedback_type, version=result.version,
        agent=result.user_agent, mail_from=result.original_mail_from,
        recipients=result.recipients, arrival=result.arrival_date, source_ip=result.source_ip,
        reported_domains=result.reported_domains, reported_uris=result.reported_uris,
        auth_results=result.authentication_results, incidents=result.incidents,
        form=result.original.form, message_id=result.original.message_id,
        return_path=result.original.return_path, ids=result.original.id_headers,
        unsubscribe=result.original.list_unsubscribe, from_=result.original.from_,
        auth_failure=(auth.auth_failure, auth.delivery_result, auth.dkim_domain,
                      auth.dkim_selector) if auth else None,
    )


def expected(name: str) -> dict[str, Any]:
    want = EXPECTED[name]
    if want["outcome"].startswith("ignored:"):
        return dict(want)
    return {**_DEFAULTS, **want}


def test_every_fixture_is_in_the_table() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.eml")}
    assert on_disk == set(EXPECTED)
    assert len(on_disk) >= 12


@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
def test_agreement_rate(line_ending: str) -> None:
    """Every fixture, with LF and with CRLF line endings (as SES stores mail)."""
    matches, misses = 0, []
    for name in sorted(EXPECTED):
        raw = (FIXTURES / name).read_bytes()
        if line_ending == "crlf":
            raw = raw.replace(b"\n", b"\r\n")
        got = project(parse_report(raw))
        if got == expected(name):
            matches += 1
        else:
            misses.append(f"{name}: got {got}, expected {expected(name)}")
    print(f"\nARF fixture agreement ({line_ending}): {matches}/{len(EXPECTED)}")
    assert not misses, "\n".join(misses)


def test_ignored_records_say_why() -> None:
    result = parse_report((FIXTURES / "arf-version-2.eml").read_bytes())
    assert isinstance(result, Ignored)
    assert "Version '2'" in result.detail and "0.1" in result.detail
    result = parse_report((FIXTURES / "dsn-delivery-status.eml").read_bytes())
    assert isinstance(result, Ignored) and "delivery-status" in result.detail


def test_human_part_in_an_unknown_charset_is_read_as_utf8_with_replacement() -> None:
    result = parse_report((FIXTURES / "arf-base64-parts.eml").read_bytes())
    assert isinstance(result, FeedbackReport)
    assert result.human_text == "A recipient complained: \ufffd\ufffd latin bytes\n"


def test_human_part_in_a_declared_charset_is_decoded() -> None:
    jmrp = parse_report((FIXTURES / "jmrp-attachment.eml").read_bytes())
    alt = parse_report((FIXTURES / "arf-alternative-qp.eml").read_bytes())
    assert isinstance(jmrp, FeedbackReport) and isinstance(alt, FeedbackReport)
    assert jmrp.human_text.startswith("A Hotmail user marked this message as junk. \u00e9")
    assert "\u00e9lectronique" in alt.human_text


def test_the_caller_names_its_own_id_headers() -> None:
    raw = (FIXTURES / "jmrp-attachment.eml").read_bytes()
    result = parse_report(raw, id_headers=("x-sid-pra", "QUIVER-ID"))
    assert isinstance(result, FeedbackReport)
    assert result.original.id_headers == (
        ("x-sid-pra", "deals@example.com"), ("QUIVER-ID", "v1.deals-13.cmVhZGVyMg.sig"),
    )


def test_report_envelope_fields() -> None:
    result = parse_report((FIXTURES / "yahoo-cfl-abuse.eml").read_bytes())
    assert isinstance(result, FeedbackReport)
    assert result.report_return_path == "feedback@arf.mail.yahoo.com"
    assert result.report_from == "Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>"
    assert result.original.to == ("reader@yahoo.com",)
    assert result.original.subject == "Your weekly deals"
