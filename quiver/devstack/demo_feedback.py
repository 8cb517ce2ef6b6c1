"""The demo's feedback loop: what recipients do after delivery, and what comes of it.

The local MX scripts two of them itself: an `asyncbounce-…` mailbox mails a DSN to
the message's return path, a `complain-…` mailbox an ARF report to the FBL address,
both through the inbound server standing in for SES. The third is a person: for
each `unsub-…` mailbox this module reads the delivered message's List-Unsubscribe
header and POSTs its one-click URL (RFC 8058), as a mail client's button does; for
each `mailunsub-…` mailbox it mails the header's mailto address with its subject
(RFC 2369), as an older client does, through the same inbound server.
Once the intakes and the endpoint have published their events, every address that
bounced (hard), complained or unsubscribed gets a second message, which must come
back `suppressed` without an SMTP attempt.
"""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from quiver.client import OutboundMessage
from quiver.devstack.export_pump import Tally
from quiver.devstack.samples import render
from quiver.devstack.servers.mx_script import local_part

ASYNC_BOUNCE, COMPLAIN, UNSUBSCRIBE = "asyncbounce", "complain", "unsub"
MAIL_UNSUBSCRIBE = "mailunsub"
# The events the loop produces, and the hard bounces at RCPT that suppress too.
ACTED_ON = ("async_bounce", "complaint", "unsubscribed", "bounced")
_HTTP_URL = re.compile(r"<(https?://[^>\s]{1,2000})>")
_MAILTO = re.compile(r"<mailto:([^>\s]{1,2000})>")
ONE_CLICK_BODY = b"List-Unsubscribe=One-Click"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
POST_TIMEOUT = 10.0


def one_click_url(message: bytes) -> str | None:
    """The HTTP(S) URL of a message's List-Unsubscribe header, if it offers one-click
    (RFC 8058 asks for List-Unsubscribe-Post as well)."""
    head = BytesHeaderParser(policy=default_policy).parsebytes(message)
    value, post = head.get("List-Unsubscribe"), head.get("List-Unsubscribe-Post")
    if value is None or post is None or "one-click" not in str(post).lower():
        return None
    found = _HTTP_URL.search(str(value))
    return found.group(1) if found else None


def mailto_request(message: bytes) -> tuple[str, str] | None:
    """(address, subject) of a message's List-Unsubscribe mailto, if it offers one."""
    head = BytesHeaderParser(policy=default_policy).parsebytes(message)
    found = _MAILTO.search(str(head.get("List-Unsubscribe") or ""))
    if found is None:
        return None
    address, _, query = found.group(1).partition("?")
    subject = parse_qs(query).get("subject", [""])[0]
    return unquote(address), subject


def send_mailto(relay: tuple[str, int], *, sender: str, address: str, subject: str) -> int:
    """Mail `address` as a recipient's client would; the SMTP reply code (250 once the
    inbound server stored it)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = address
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    message.set_content("unsubscribe\n")
    with smtplib.SMTP(*relay, timeout=POST_TIMEOUT) as smtp:
        refused = smtp.send_message(message, from_addr=sender, to_addrs=[address])
    return 550 if refused else 250


def post_one_click(url: str) -> int:
    """POST the one-click body to `url`; the HTTP status. Loopback only: the demo never
    sends traffic anywhere else, whatever a header says."""
    if urlsplit(url).hostname not in _LOOPBACK_HOSTS:
        raise ValueError(f"not a loopback URL: {url}")
    request = urllib.request.Request(  # noqa: S310 (loopback, checked above)
        url, data=ONE_CLICK_BODY, method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as response:  # noqa: S310
        return int(response.status)


@dataclass
class FeedbackLoop:
    tally: Tally
    # What the MX accepted so far ({rcpt_tos, file, ...} per message).
    received: Callable[[], list[dict[str, Any]]]
    # The inbound server standing in for SES, where mailto requests go.
    inbound: tuple[str, int]
    clicked: dict[str, int] = field(default_factory=dict)
    mailed: dict[str, int] = field(default_factory=dict)
    waited_s: float = 0.0
    second_round: list[str] = field(default_factory=list)

    def _accepted(self, prefix: str) -> set[str]:
        return {rcpt for rcpt, _ in self._delivered(prefix)}

    def _delivered(self, prefix: str) -> list[tuple[str, Path]]:
        """(recipient, stored message) for each address with `prefix` the MX accepted,
        lower-cased, once per address (its first message)."""
        found: dict[str, Path] = {}
        for record in self.received():
            for rcpt in record["rcpt_tos"]:
                key = rcpt.lower()
                if local_part(key).startswith(prefix):
                    found.setdefault(key, Path(record["file"]))
        return list(found.items())

    def click_unsubscribe(self) -> dict[str, int]:
        """POST the one-click URL of every delivered `unsub-…` message, once per address."""
        for rcpt, message in self._delivered(UNSUBSCRIBE):
            if rcpt not in self.clicked:
                url = one_click_url(message.read_bytes())
                self.clicked[rcpt] = post_one_click(url) if url else 0
        return self.clicked

    def mail_unsubscribe(self) -> dict[str, int]:
        """Mail the List-Unsubscribe mailto of every delivered `mailunsub-…` message."""
        for rcpt, message in self._delivered(MAIL_UNSUBSCRIBE):
            if rcpt in self.mailed:
                continue
            request = mailto_request(message.read_bytes())
            self.mailed[rcpt] = 0 if request is None else send_mailto(
                self.inbound, sender=rcpt, address=request[0], subject=request[1])
        return self.mailed

    def expected(self) -> dict[str, int]:
        """How many addresses each post-delivery event should reach."""
        return {"async_bounce": len(self._accepted(ASYNC_BOUNCE)),
                "complaint": len(self._accepted(COMPLAIN)),
                "unsubscribed": sum(1 for status in self.clicked.values() if status == 200)
                + sum(1 for code in self.mailed.values() if code == 250)}

    def wait_for_events(self, *, timeout: float) -> bool:
        """Wait until every DSN, report and click has its event (or `timeout`)."""
        started = time.monotonic()
        try:
            while True:
                want = self.expected()
                if all(len(self.tally.recipients(e)) >= n for e, n in want.items()):
                    return True
                if time.monotonic() - started >= timeout:
                    return False
                time.sleep(0.2)
        finally:
            self.waited_s = time.monotonic() - started

    def again(self) -> list[OutboundMessage]:
        """A second message to every address the loop acted on (sorted, so runs compare)."""
        addresses: set[str] = set()
        for event in ACTED_ON:
            addresses |= {a.lower() for a in self.tally.recipients(event)}
        self.second_round = sorted(addresses)
        messages = []
        for n, rcpt in enumerate(self.second_round):
            message_id = f"demo-again-{n:06d}"
            messages.append(OutboundMessage(
                id=message_id, sender="bounces@news.quiver-demo.test", to=[rcpt],
                raw=render(message_id=message_id, from_addr="hello@news.quiver-demo.test",
                           to=[rcpt], subject="Winter collection, second message"),
                campaign="winter-demo", meta={"demo": True, "second_round": True},
            ))
        return messages

    def summary(self) -> dict[str, Any]:
        suppressed = {a.lower() for a in self.tally.recipients("suppressed")}
        again = set(self.second_round)
        return {
            "async_bounced": len(self.tally.recipients("async_bounce")),
            "complaints": len(self.tally.recipients("complaint")),
            "unsubscribed": len(self.tally.recipients("unsubscribed")),
            "suppressed": self.tally.total("suppressed"),
            "one_click_posts": dict(sorted(_statuses(self.clicked).items())),
            "mailto_requests": dict(sorted(_statuses(self.mailed).items())),
            "feedback_wait_s": round(self.waited_s, 2),
            "second_round": len(again),
            "second_round_not_suppressed": sorted(again - suppressed),
        }


def _statuses(clicked: dict[str, int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in clicked.values():
        counts[str(status)] = counts.get(str(status), 0) + 1
    return counts
