"""Inbound mail for the intake tests: signed return paths, and DSNs and ARF reports as
SES stores them (its Return-Path and Received fields on top)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

from quiver.returnpath import KeyRing, ReturnPathKey, ReturnPaths, ReturnPathVerifier
from quiver.storage.memory import MemoryReturnPaths

T0 = 1_790_000_000.0
DAY = 86400.0
FROM_DOMAIN = "example.com"
BOUNCE_DOMAIN = "bounces.example.com"
FBL_ADDRESS = "fbl@fbl.example.com"
BOUNCE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bounces"
SECRET = b"k" * 32
RING_JSON = ('{"keys": [{"id": 1, "secret": "' + base64.b64encode(SECRET).decode()
             + '", "created": "2026-01-01T00:00:00Z"}]}')


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ring(*, retired: float | None = None) -> KeyRing:
    return KeyRing([ReturnPathKey(id=1, secret=SECRET, created=T0 - 400 * DAY,
                                  retired=retired)])


class Verp:
    """Signed return paths and their store, as the sender leaves them."""

    def __init__(self, *, clock: Callable[[], float], keys: KeyRing | None = None,
                 tenants: frozenset[str] | None = None) -> None:
        self.store = MemoryReturnPaths(clock=clock)
        self.paths = ReturnPaths(keys or ring(), clock=clock)
        self.verifier = ReturnPathVerifier(keys=keys or ring(), store=self.store,
                                           bounce_domains={BOUNCE_DOMAIN: tenants},
                                           clock=clock)

    def address(self, *, message_id: str, recipient: str, tenant: str | None = "acme",
                campaign: str | None = "december") -> str:
        address, record = self.paths.address(
            bounce_domain=BOUNCE_DOMAIN, message_id=message_id, recipient=recipient,
            tenant=tenant, campaign=campaign)
        asyncio.run(self.store.put([record]))
        return address


def forged(address: str) -> str:
    """The address with one token character changed: the MAC no longer matches."""
    local, _, domain = address.partition("@")
    last = "a" if local[-1] != "a" else "b"
    return f"{local[:-1]}{last}@{domain}"


def ses_stored(raw: bytes, *, recipient: str, sender: str = "") -> bytes:
    """`raw` as SES stores it: the envelope sender and a Received field naming the
    envelope recipient on top."""
    eol = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    head = (f"Return-Path: <{sender}>\nReceived: from mx2.example.org (mx2.example.org "
            f"[198.51.100.20])\n by inbound-smtp.us-east-1.amazonaws.com with SMTP id "
            f"q0ab1cd2\n for {recipient};\n Fri, 04 Dec 2026 10:00:00 +0000 (UTC)\n"
            "X-SES-Spam-Verdict: PASS\n")
    return head.encode().replace(b"\n", eol) + raw


def dsn(*, return_path: str, recipient: str, status: str = "5.1.1",
        diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        ) -> bytes:
    """A Postfix-shaped RFC 3464 report of one failed recipient, stored by SES."""
    diag = diagnostic.format(rcpt=recipient)
    text = f"""From: MAILER-DAEMON@mx2.example.org (Mail Delivery System)
To: {return_path}
Subject: Undelivered Mail Returned to Sender
Date: Fri, 04 Dec 2026 09:59:58 +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"
Message-Id: <dsn-1@mx2.example.org>

--B0UND
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not be delivered.

--B0UND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx2.example.org
X-Postfix-Sender: rfc822; {return_path}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: {status}
Remote-MTA: dns; mailstore.example.org
Diagnostic-Code: {diag}

--B0UND
Content-Type: text/rfc822-headers

Return-Path: <{return_path}>
From: News <news@{FROM_DOMAIN}>
To: {recipient}
Subject: December news
Message-ID: <m-1@{FROM_DOMAIN}>

--B0UND--
"""
    return ses_stored(text.replace("\n", "\r\n").encode(), recipient=return_path)


def arf(*, return_path: str, recipient: str, feedback_type: str = "abuse",
        reporter: str = "yahoo.com") -> bytes:
    """A Yahoo-shaped RFC 5965 report (unsigned: sign it with tests.arf_signing),
    before SES's fields are added."""
    text = f"""From: staff@{reporter}
To: {FBL_ADDRESS}
Subject: FW: December news
Date: Fri, 04 Dec 2026 09:59:58 +0000
Message-ID: <report-1@{reporter}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF0"

--ARF0
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP 198.51.100.11.

--ARF0
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: {reporter} FBL/1.0
Version: 1
Original-Mail-From: <{return_path}>
Original-Rcpt-To: <{recipient}>
Reported-Domain: {FROM_DOMAIN}
Source-IP: 198.51.100.11

--ARF0
Content-Type: text/rfc822-headers

Return-Path: <{return_path}>
From: News <news@{FROM_DOMAIN}>
To: {recipient}
Subject: December news
Message-ID: <m-1@{FROM_DOMAIN}>

--ARF0--
"""
    return text.replace("\n", "\r\n").encode()


MAILTO = "unsubscribe@bounces.example.com"


def unsubscribe_request(*, subject: str, mailto: str = MAILTO, sender: str = "ann@example.org",
                        extra: str = "") -> bytes:
    """The mail a client sends for `<mailto:MAILTO?subject=...>`, stored by SES;
    `extra` adds header fields ("Name: value\\n" each)."""
    text = (f"From: Ann Lee <{sender}>\nTo: {mailto}\nSubject: {subject}\n"
            "Date: Fri, 04 Dec 2026 10:00:00 +0000\nMessage-ID: <req-1@example.org>\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n{extra}\n"
            "This message was automatically generated by the mail client.\n")
    return ses_stored(text.replace("\n", "\r\n").encode(), recipient=mailto, sender=sender)
