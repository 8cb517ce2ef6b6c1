"""What the local MX mails after it has accepted a message, as mailbox providers do.

Two kinds of report, each built as bytes with CRLF line endings, ready for DATA:

- `dsn_for`: an RFC 3464 delivery status notification for recipients whose mailbox
  turned out to be unavailable after the 250 (an asynchronous bounce), laid out as
  Postfix writes one: a human-readable part, a message/delivery-status part, and the
  returned message's header as text/rfc822-headers. It goes to the transaction's
  MAIL FROM with the null sender.
- `arf_for`: an RFC 5965 feedback report (a user pressed "this is spam"), laid out as
  Yahoo's CFL and Microsoft's JMRP send them: a text part, message/feedback-report,
  and the whole original as message/rfc822, DKIM-signed by the reporter's domain.

Both return the original as the mailbox stored it, with the Return-Path and Received
fields final delivery prepends: the Return-Path carries the sender's VERP token,
which is how the sender's intake finds the message a report is about.

Every value written into a header or report field is checked for CR, LF and NUL, so
a hostile address or HELO name cannot add fields of its own.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import dkim

CRLF = b"\r\n"
# Postfix's bounce_size_limit: a DSN returns at most this much of the original's
# header. More is a header flood, not something the sender needs to find its message.
RETURNED_HEADER_LIMIT = 50_000
# A feedback report carries the whole original below this size and only its header
# above it (RFC 5965 2 (c) allows either); the FBL intake refuses reports over 4 MiB.
WHOLE_ORIGINAL_LIMIT = 1024 * 1024
# What the reporter's signature covers: the fields a receiver shows, plus the MIME
# fields that say how to read the signed body.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
)
FEEDBACK_USER_AGENT = "QuiverLocalMX-FBL/1.0"
# The status and reply of a mailbox that is gone: what the accepting MX's own
# delivery to the mailbox store was told after it had answered 250.
DSN_STATUS = "5.1.1"
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# A domain name as it may appear after the @ of a From field (no IP literals).
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)


@dataclass(frozen=True)
class Reporter:
    """Who sends feedback reports: `address` in From and MAIL FROM; `domain`'s key
    (PEM, under `selector`) signs them. Without a key the reports go unsigned."""

    domain: str
    address: str
    selector: str | None = None
    private_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.selector is None) != (self.private_key is None):
            raise ValueError("a reporter's selector and private key go together")


@dataclass(frozen=True)
class Delivery:
    """How the original reached the MX: what final delivery writes into Received."""

    mail_from: str
    helo: str | None
    peer_ip: str
    by: str  # the MX's own hostname
    arrived: dt.datetime


def dsn_for(
    *,
    original: bytes,
    recipients: Sequence[str],
    delivery: Delivery,
    now: dt.datetime,
) -> bytes:
    """A DSN (RFC 3464) reporting each of `recipients` as failed with 5.1.1, addressed
    to the original's MAIL FROM (the report itself goes out with the null sender)."""
    if not recipients:
        raise ValueError("a delivery status notification names at least one recipient")
    if not delivery.mail_from:
        raise ValueError("mail with the null sender is never bounced (RFC 5321 4.5.5)")
    mta = _checked(delivery.by, "the MX hostname")
    rcpts = [_checked(r, "a recipient") for r in recipients]
    returned = _truncated_header(_as_delivered(_head(original), delivery=delivery,
                                               rcpt=rcpts[0]))
    human = "\r\n".join([
        f"This is the mail system at host {mta}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. Its header is attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "                   The mail system",
        "",
        *(f"<{r}>: {_diagnostic(r)}" for r in rcpts),
        "",
    ]).encode()
    per_message = [
        f"Reporting-MTA: dns; {mta}",
        *([f"Received-From-MTA: dns; {_checked(delivery.helo, 'the HELO name')}"]
          if delivery.helo else []),
        f"Arrival-Date: {_date(delivery.arrived)}",
    ]
    blocks = ["\r\n".join(per_message)]
    for rcpt in rcpts:
        blocks.append("\r\n".join([
            f"Final-Recipient: rfc822; {rcpt}",
            f"Original-Recipient: rfc822; {rcpt}",
            "Action: failed",
            f"Status: {DSN_STATUS}",
            f"Diagnostic-Code: smtp; 550 {DSN_STATUS} {_diagnostic(rcpt)}",
            f"Last-Attempt-Date: {_date(now)}",
        ]))
    status = ("\r\n\r\n".join(blocks) + "\r\n").encode()
    parts = [
        (["Content-Description: Notification",
          f"Content-Type: text/plain; charset={'us-ascii' if human.isascii() else 'utf-8'}"],
         human),
        (["Content-Description: Delivery report", "Content-Type: message/delivery-status"],
         status),
        (["Content-Description: Undelivered Message Headers",
          "Content-Type: text/rfc822-headers",
          f"Content-Transfer-Encoding: {_transfer_encoding(returned)}"], returned),
    ]
    head = [
        f"Date: {_date(now)}",
        f"From: MAILER-DAEMON@{mta} (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        f"To: {_checked(delivery.mail_from, 'the envelope sender')}",
        # RFC 3834 5: a DSN is an automatic response, never to be answered by one.
        "Auto-Submitted: auto-replied",
        f"Message-ID: <{secrets.token_hex(12)}@{mta}>",
    ]
    return _multipart(head, report_type="delivery-status", parts=parts)


def arf_for(
    *,
    original: bytes,
    rcpt: str,
    delivery: Delivery,
    reporter: Reporter,
    fbl_address: str,
    now: dt.datetime,
) -> bytes:
    """A feedback report (RFC 5965, Feedback-Type: abuse) from `rcpt` about `original`,
    from `reporter` to `fbl_address`, DKIM-signed when the reporter has a key."""
    rcpt = _checked(rcpt, "the recipient")
    stored = _as_delivered(original, delivery=delivery, rcpt=rcpt)
    ip = _checked(delivery.peer_ip, "the source IP")
    domain = _reported_domain(original, delivery.mail_from)
    text = "\r\n".join([
        f"This is an email abuse report for an email message received from IP {ip} on "
        f"{_date(delivery.arrived)}.",
        "A user of this mailbox provider marked it as spam.",
        "For more information about this format please see "
        "https://www.rfc-editor.org/rfc/rfc5965.",
        "",
    ]).encode()
    fields = [
        "Feedback-Type: abuse",
        f"User-Agent: {FEEDBACK_USER_AGENT}",
        "Version: 1",
        f"Original-Mail-From: <{_checked(delivery.mail_from, 'the envelope sender')}>",
        f"Original-Rcpt-To: <{rcpt}>",
        f"Arrival-Date: {_date(delivery.arrived)}",
        f"Reporting-MTA: dns; {_checked(delivery.by, 'the MX hostname')}",
        f"Source-IP: {ip}",
        *([f"Reported-Domain: {domain}"] if domain else []),
    ]
    report = ("\r\n".join(fields) + "\r\n").encode()
    if len(stored) <= WHOLE_ORIGINAL_LIMIT:
        returned = (["Content-Type: message/rfc822", "Content-Disposition: inline",
                     f"Content-Transfer-Encoding: {_transfer_encoding(stored)}"], stored)
    else:
        header = _truncated_header(stored)
        returned = (["Content-Type: text/rfc822-headers",
                     f"Content-Transfer-Encoding: {_transfer_encoding(header)}"], header)
    parts = [
        (["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"],
         text),
        (["Content-Type: message/feedback-report"], report),
        returned,
    ]
    head = [
        f"From: <{_checked(reporter.address, 'the reporter address')}>",
        f"To: <{_checked(fbl_address, 'the FBL address')}>",
        f"Subject: Email Feedback Report for IP {ip}",
        f"Date: {_date(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{_checked(reporter.domain, 'the reporter domain')}>",
    ]
    message = _multipart(head, report_type="feedback-report", parts=parts)
    if reporter.selector is None or reporter.private_key is None:
        return message
    signature = dkim.sign(
        message, selector=reporter.selector.encode(), domain=reporter.domain.encode(),
        privkey=reporter.private_key, include_headers=list(SIGNED_HEADERS),
        canonicalize=(b"relaxed", b"relaxed"),
    )
    return bytes(signature) + message


def _diagnostic(rcpt: str) -> str:
    return f"<{rcpt}>: mailbox unavailable"


def _multipart(head: list[str], *, report_type: str,
               parts: list[tuple[list[str], bytes]]) -> bytes:
    bodies = [body if body.endswith(CRLF) else body + CRLF for _, body in parts]
    boundary = _boundary(bodies)
    out = [line.encode("utf-8", "replace") + CRLF for line in head]
    out += [
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/report; report-type={report_type};\r\n'
        f'\tboundary="{boundary}"\r\n'.encode(),
        f"Content-Transfer-Encoding: {_transfer_encoding(b''.join(bodies))}\r\n".encode(),
        CRLF,
        b"This is a MIME-encapsulated message.\r\n",
    ]
    for (fields, _), body in zip(parts, bodies, strict=True):
        out.append(CRLF + f"--{boundary}".encode() + CRLF)
        out += [f.encode() + CRLF for f in fields]
        out += [CRLF, body]
    out.append(CRLF + f"--{boundary}--".encode() + CRLF)
    return b"".join(out)


def _boundary(bodies: list[bytes]) -> str:
    while True:
        candidate = f"=_quiver-mx-{secrets.token_hex(12)}"
        if not any(candidate.encode() in body for body in bodies):
            return candidate


def _as_delivered(original: bytes, *, delivery: Delivery, rcpt: str) -> bytes:
    """The original as the mailbox stored it: CRLF line endings, with the fields
    final delivery prepends (RFC 5321 4.4)."""
    helo = _checked(delivery.helo or "unknown", "the HELO name")
    received = (
        f"Received: from {helo} ({_checked(delivery.peer_ip, 'the source IP')})\r\n"
        f"\tby {_checked(delivery.by, 'the MX hostname')} with ESMTP\r\n"
        f"\tfor <{rcpt}>; {_date(delivery.arrived)}\r\n"
    )
    return_path = f"Return-Path: <{_checked(delivery.mail_from, 'the envelope sender')}>\r\n"
    return (return_path + received).encode("utf-8", "replace") + _crlf(original)


def _head(message: bytes) -> bytes:
    """The header block of `message`, up to and including its last line end."""
    found = _HEADER_END.search(message)
    if found is None:
        return message if message.endswith((b"\r", b"\n")) else message + CRLF
    return message[: found.start()] + CRLF


def _truncated_header(message: bytes) -> bytes:
    """The header block of `message` (CRLF), cut at a line end within the limit."""
    header = _crlf(_head(message))
    if len(header) <= RETURNED_HEADER_LIMIT:
        return header
    cut = header.rfind(CRLF, 0, RETURNED_HEADER_LIMIT)
    return header[: cut + 2] if cut > 0 else b""


def _reported_domain(original: bytes, mail_from: str) -> str | None:
    """The domain the complaint is against: the original From's, else the envelope's."""
    # Bounded: a header flood costs a slice, not a parse of all of it.
    header = _head(original[:RETURNED_HEADER_LIMIT])
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", header).decode("utf-8", "replace")
    from_value = next((line.split(":", 1)[1][:1000] for line in unfolded.splitlines()
                       if line.lower().startswith("from:")), "")
    for address in (email.utils.parseaddr(from_value)[1], mail_from):
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if "@" in address and _DOMAIN.match(domain):
            return domain
    return None


def _transfer_encoding(body: bytes) -> str:
    """7bit, 8bit or binary, by what `body` holds (RFC 2045 2.7-2.9; message/* parts
    may only be declared one of these three, RFC 2046 5.2.1)."""
    if b"\x00" in body or any(len(line) > 998 for line in body.split(CRLF)):
        return "binary"
    return "7bit" if body.isascii() else "8bit"


def _crlf(data: bytes) -> bytes:
    return _LINE_ENDINGS.sub(CRLF, data)


def _checked(value: str, what: str) -> str:
    if _FORBIDDEN.search(value):
        raise ValueError(f"{what} {value!r} contains CR, LF or NUL; refused in a report")
    return value


def _date(when: dt.datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("report dates need a time zone (an aware datetime)")
    return email.utils.format_datetime(when)
