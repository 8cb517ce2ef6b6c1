"""Parse one inbound mail on the bounce domain into failed-recipient reports or a typed
reason to ignore it.

RFC 3464 multipart/report DSNs come first (their delivery-status fields decide); mail
without a delivery-status part is tried against the stock prose of common MTAs
(quiver/bounce/dsn_text.py); auto-replies and challenge mails are named as such.
Every status and diagnostic is classified by the one classifier
(quiver/bounce/classify.py and its rules file). All costs are bounded by
quiver/bounce/dsn_limits.py; parse_bounce never raises on any input bytes.
"""

from __future__ import annotations

import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from quiver.bounce.classify import Classification, Classifier, default_classifier
from quiver.bounce.dsn_autoreply import auto_reply, challenge, from_daemon
from quiver.bounce.dsn_fields import (
    Diagnostic,
    Fields,
    address,
    mta_name,
    parse_blocks,
    split_diagnostic,
    status_of,
    typed_value,
)
from quiver.bounce.dsn_limits import MAX_FIELD_CHARS, MAX_ORIGINAL_FIELDS, MAX_TEXT_PER_PART
from quiver.bounce.dsn_mime import (
    Part,
    TextBudget,
    TooComplex,
    content_type,
    decode_words,
    header,
    parse_message,
    precheck,
    walk,
)
from quiver.bounce.dsn_text import TextReport, is_delay, parse_text, recognise
from quiver.bounce.dsn_types import (
    BounceReport,
    FailedRecipient,
    Ignored,
    IgnoreReason,
    OriginalMessage,
    ParseResult,
)

_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_HEADERS_TYPES = frozenset({"text/rfc822-headers", "text/global-headers"})
_ORIGINAL_TYPES = frozenset({"message/rfc822", "message/global"})
# A header field's first line (a name without spaces, then a colon).
_FIELD_START = re.compile(r"^[A-Za-z0-9-]{1,76}:")
# Where a bounce was delivered, most specific first: what the receiving MTA recorded
# as the envelope recipient, then what the reporting MTA wrote.
_ADDRESSED_TO = ("X-Original-To", "Delivered-To", "Envelope-To", "X-Envelope-To", "To")


def parse_bounce(raw: bytes, *, classifier: Classifier | None = None) -> ParseResult:
    refused = precheck(raw)
    if refused is not None:
        return refused
    rules = classifier or default_classifier()
    try:
        message = parse_message(raw)
        parts = walk(message)
        return _parse(message, parts, rules)
    except TooComplex as exc:
        return Ignored(IgnoreReason.TOO_COMPLEX, str(exc))
    except RecursionError:
        # The walk is iterative and nesting is bounded before parsing; this is the
        # last guard should the email package recurse on some other shape.
        return Ignored(IgnoreReason.TOO_COMPLEX, "structure too deep to parse")


def _parse(message: Message, parts: list[Part], rules: Classifier) -> ParseResult:
    budget = TextBudget()
    statuses = [p for p in parts if content_type(p.message) in _STATUS_TYPES and not p.in_original]
    texts = [p for p in parts if _is_report_text(p)]
    original = _original(parts, budget)
    addressed_to = next((a for h in _ADDRESSED_TO if (a := address(header(message, h)))), None)
    subject = header(message, "Subject") or ""

    if statuses:
        found = _from_delivery_status(statuses, budget, rules=rules,
                                      addressed_to=addressed_to, original=original)
        if found is not None:
            return found
        # A delivery-status part without recipient fields: the prose may still say.
    body = "\n".join(budget.text(p.message) for p in texts)
    if challenge(message, body):
        return Ignored(IgnoreReason.CHALLENGE_RESPONSE, "a challenge-response verification")
    # Mail systems send bounces with Auto-Submitted too (Postfix, Exim): from them it
    # is a bounce to read, from anyone else an auto-reply.
    daemon = from_daemon(message)
    reply = auto_reply(message, body=body)
    if reply is not None and not daemon:
        return Ignored(reply, f"auto-reply: {subject[:200]!r}")
    fmt = recognise(body, subject=subject) if daemon or _bounce_subject(subject) else None
    if fmt is None:
        if reply is not None:
            return Ignored(reply, f"auto-reply: {subject[:200]!r}")
        if statuses:
            return Ignored(IgnoreReason.MALFORMED,
                           "delivery-status part without recipient fields")
        if daemon and is_delay(body, subject=subject):
            return Ignored(IgnoreReason.DELAY_ONLY, "delay warning")
        return Ignored(IgnoreReason.NOT_A_BOUNCE, "no delivery report and no bounce text")
    exclude = frozenset(a.lower() for a in (addressed_to, address(header(message, "From")))
                        if a)
    report = parse_text(body, fmt=fmt, subject=subject, exclude=exclude)
    if report.delayed:
        return Ignored(IgnoreReason.DELAY_ONLY, f"{fmt} delay warning")
    if not report.failures:
        return Ignored(IgnoreReason.MALFORMED,
                       f"{fmt} bounce text without a recognisable recipient")
    if original is None and report.original_text:
        original = _headers_from_text(report.original_text)
    return _text_report(report, rules=rules, addressed_to=addressed_to, original=original)


def _is_report_text(part: Part) -> bool:
    if part.in_original or content_type(part.message) not in ("text/plain", "text/html"):
        return False
    disposition = str(part.message.get("Content-Disposition", "")).lower()
    return not disposition.startswith("attachment") or part.depth <= 1


def _bounce_subject(subject: str) -> bool:
    return recognise("", subject=subject) is not None


def _from_delivery_status(
    statuses: list[Part], budget: TextBudget, *, rules: Classifier,
    addressed_to: str | None, original: OriginalMessage | None,
) -> ParseResult | None:
    blocks: list[Fields] = []
    for part in statuses:
        blocks.extend(parse_blocks(budget.text(part.message)))
    per_message = blocks[0] if blocks else {}
    recipients = [b for b in blocks[1:] if "final-recipient" in b or "original-recipient" in b]
    if not recipients:
        return None
    failed: list[FailedRecipient] = []
    delayed = 0
    for fields in recipients:
        action = (fields.get("action") or "").split("(")[0].strip().lower()
        status = status_of(fields.get("status"))
        if action == "delayed" or (not action and status and status.startswith("4")):
            delayed += 1
            continue
        if action != "failed" and not (not action and status and status.startswith("5")):
            continue
        recipient = address(fields.get("final-recipient")) or address(
            fields.get("original-recipient"))
        if recipient is None:
            continue
        raw_diag = fields.get("diagnostic-code")
        diagnostic = split_diagnostic(raw_diag) if raw_diag else Diagnostic(None, None, "")
        failed.append(FailedRecipient(
            recipient=recipient,
            action="failed",
            status=status or diagnostic.enhanced,
            diagnostic=raw_diag,
            remote_mta=mta_name(fields.get("remote-mta")),
            original_recipient=address(fields.get("original-recipient")),
            classification=_classify(rules, diagnostic, status=status),
        ))
    if not failed:
        if delayed:
            return Ignored(IgnoreReason.DELAY_ONLY, f"{delayed} recipient(s) delayed, none failed")
        return Ignored(IgnoreReason.NOT_A_BOUNCE, "delivery report without a failed recipient")
    sender = address(per_message.get("x-postfix-sender")) or (
        address(original.get("Return-Path")) if original else None)
    return BounceReport(
        format="rfc3464",
        recipients=tuple(failed),
        reporting_mta=mta_name(per_message.get("reporting-mta")),
        envelope_id=typed_value(per_message.get("original-envelope-id")),
        addressed_to=addressed_to,
        original_sender=sender,
        original=original,
    )


def _text_report(report: TextReport, *, rules: Classifier, addressed_to: str | None,
                 original: OriginalMessage | None) -> BounceReport:
    failed = tuple(
        FailedRecipient(
            recipient=f.recipient,
            action="failed",
            status=f.diagnostic.enhanced,
            diagnostic=_as_reply(f.diagnostic),
            remote_mta=f.remote_mta,
            original_recipient=None,
            classification=_classify(rules, f.diagnostic, status=f.diagnostic.enhanced),
        )
        for f in report.failures)
    return BounceReport(
        format=report.format,
        recipients=failed,
        reporting_mta=report.reporting_mta,
        envelope_id=None,
        addressed_to=addressed_to,
        original_sender=address(original.get("Return-Path")) if original else None,
        original=original,
    )


def _as_reply(diagnostic: Diagnostic) -> str | None:
    """The diagnostic as the remote wrote it: "550 5.1.1 text", or the bare text."""
    words = [str(diagnostic.code) if diagnostic.code is not None else "",
             diagnostic.enhanced if diagnostic.code is not None and diagnostic.enhanced else "",
             diagnostic.text]
    return " ".join(w for w in words if w) or None


def _classify(rules: Classifier, diagnostic: Diagnostic, *, status: str | None) -> Classification:
    enhanced = status or diagnostic.enhanced
    if (status and diagnostic.enhanced and status.endswith(".0.0")
            and diagnostic.enhanced[0] == status[0]):
        # Exim writes "Status: 5.0.0" with the remote's "550 5.1.1" in the diagnostic:
        # the remote's code is the more specific verdict on the address.
        enhanced = diagnostic.enhanced
    code = diagnostic.code
    if code is None:
        # A report without the remote reply (a local delivery failure, qmail's "#5.1.1")
        # gets the generic reply of its status class (RFC 3463: 5.x.x ↔ 5yz); a text
        # bounce without any status is a permanent failure by its own words.
        code = 450 if enhanced and enhanced.startswith("4") else 550
    return rules.classify(code=code, enhanced=enhanced, text=diagnostic.text)


def _original(parts: list[Part], budget: TextBudget) -> OriginalMessage | None:
    for part in parts:
        kind = content_type(part.message)
        if part.in_original or part.depth > 2:
            continue
        if kind in _ORIGINAL_TYPES:
            payload = part.message.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message):
                return _headers_of(inner)
        if kind in _HEADERS_TYPES:
            return _headers_from_text(budget.text(part.message))
    return None


def _headers_from_text(text: str) -> OriginalMessage | None:
    """The header fields that open the returned message a text bounce appends, after
    its marker line ("--- Below this line is a copy of the message.")."""
    lines = text[:MAX_TEXT_PER_PART].splitlines()
    start = next((i for i, line in enumerate(lines) if _FIELD_START.match(line)), None)
    if start is None:
        return None
    parsed = HeaderParser(policy=compat32).parsestr("\n".join(lines[start:]))
    original = _headers_of(parsed)
    return original if original.headers else None


def _headers_of(message: Message) -> OriginalMessage:
    kept: list[tuple[str, str]] = []
    for name, value in message.items()[:MAX_ORIGINAL_FIELDS]:
        kept.append((str(name), decode_words(str(value))[:MAX_FIELD_CHARS]))
    return OriginalMessage(headers=tuple(kept))

