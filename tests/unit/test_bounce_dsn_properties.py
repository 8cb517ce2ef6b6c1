"""Round trips: a generated recipient and status written into the shapes MTAs use
come back out of parse_bounce unchanged, classified as the classifier says."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.bounce import default_classifier
from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import BounceReport

_LOCAL = st.from_regex(r"[a-z][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s)
_DOMAIN = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.(example|test)\.(org|net|de|fr)", fullmatch=True)
_STATUS = st.tuples(st.sampled_from([4, 5]), st.integers(0, 7), st.integers(0, 30)).map(
    lambda t: f"{t[0]}.{t[1]}.{t[2]}")
_TEXT = st.sampled_from(["User unknown", "Mailbox full", "Message rejected", "No such user",
                         "Service unavailable", "Requested action not taken"])

HEAD = ("From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
        "To: b-tok.k1@bounces.example.com\nSubject: Undelivered Mail Returned to Sender\n")


def rfc3464(rcpt: str, status: str, code: int, text: str) -> str:
    return (HEAD + 'MIME-Version: 1.0\nContent-Type: multipart/report; '
            'report-type=delivery-status; boundary="q"\n\n--q\nContent-Type: text/plain\n\n'
            "Failed.\n--q\nContent-Type: message/delivery-status\n\n"
            "Reporting-MTA: dns; mx.example.net\n\n"
            f"Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: {status}\n"
            f"Diagnostic-Code: smtp; {code} {status}\n    {text}\n--q--\n")


def exim(rcpt: str, status: str, code: int, text: str) -> str:
    return (HEAD + "\nThis message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            f"  {rcpt}\n    host mx.example.net [192.0.2.1]\n"
            f"    SMTP error from remote mail server after RCPT TO:<{rcpt}>:\n"
            f"    {code} {status} {text}\n")


def qmail(rcpt: str, status: str, code: int, text: str) -> str:
    return (HEAD + "\nHi. This is the qmail-send program at mx.example.net.\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
            f"<{rcpt}>:\n192.0.2.1 does not like recipient.\n"
            f"Remote host said: {code} {status} {text}\nGiving up on 192.0.2.1.\n\n"
            "--- Below this line is a copy of the message.\n\nMessage-ID: <x@example.com>\n")


def postfix_text(rcpt: str, status: str, code: int, text: str) -> str:
    return (HEAD + "\nThis is the mail system at host mx.example.net.\n\n"
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n\n"
            f"<{rcpt}>: host mx.example.net[192.0.2.1] said: {code} {status}\n"
            f"    <{rcpt}>: {text} (in reply to RCPT TO command)\n")


@settings(max_examples=300)
@given(st.sampled_from([rfc3464, exim, qmail, postfix_text]), _LOCAL, _DOMAIN, _STATUS, _TEXT)
def test_recipient_and_status_survive_every_shape(
    shape: Callable[[str, str, int, str], str], local: str, domain: str, status: str,
    text: str,
) -> None:
    rcpt = f"{local}@{domain}"
    code = 550 if status.startswith("5") else 450
    result = parse_bounce(shape(rcpt, status, code, text).encode())
    assert isinstance(result, BounceReport), result
    assert [(r.recipient, r.status) for r in result.recipients] == [(rcpt, status)]
    got = result.recipients[0].classification
    expected = default_classifier().classify(code=code, enhanced=status, text=text)
    # The MTA's wrapper words (Postfix's "(in reply to RCPT TO command)") may be in the
    # reason, so the reason must quote the remote's text and the kind must agree.
    assert text in got.reason
    assert got.kind == expected.kind
