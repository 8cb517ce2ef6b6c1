"""What parsing an inbound feedback report yields: a typed report, or why it was ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# RFC 5965 7.3's registry as of RFC 6591 (auth-failure). A token outside it is
# reported as "other", its text kept in `feedback_type_raw`.
FeedbackType = Literal["abuse", "fraud", "virus", "other", "not-spam", "auth-failure"]
FEEDBACK_TYPES: tuple[FeedbackType, ...] = (
    "abuse", "fraud", "virus", "other", "not-spam", "auth-failure",
)

IgnoreReason = Literal["not_arf", "malformed", "too_large", "too_complex", "unsupported_version"]

# How the report was laid out: "arf" is RFC 5965 (Version 1, or the pre-RFC
# draft's 0.1 that Yahoo CFL and Microsoft JMRP still send); "jmrp-attachment"
# is Microsoft's older "RFC822 Attachment" format: not a multipart/report at all,
# just the reported message attached, its To redacted and the recipient in an
# X-HmXmrOriginalRecipient field.
Shape = Literal["arf", "jmrp-attachment"]

# How much of the original came back: the whole message (message/rfc822), its
# header block only (text/rfc822-headers), or nothing (RFC 5965 allows omitting it).
OriginalForm = Literal["message", "headers", "absent"]


@dataclass(frozen=True, slots=True)
class Ignored:
    """A record that is not acted on; `detail` says what to look at."""

    reason: IgnoreReason
    detail: str


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The header fields of the reported message a caller needs to recover it.

    Values are as written (unfolded, stripped), never decoded further: a caller
    verifies a VERP token in `return_path` or a signed id in `id_headers` itself.
    """

    form: OriginalForm
    message_id: str | None = None
    return_path: str | None = None
    from_: str | None = None
    to: tuple[str, ...] = ()
    subject: str | None = None
    list_unsubscribe: str | None = None
    # Every field named in the caller's `id_headers` that the original carries,
    # as (name as asked, value), in message order.
    id_headers: tuple[tuple[str, str], ...] = ()
    # Microsoft's stand-in for the recipient it redacted from To.
    hm_original_recipient: str | None = None


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """RFC 6591 fields of an auth-failure report."""

    auth_failure: str | None = None
    delivery_result: str | None = None
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_identity: str | None = None
    spf_dns: tuple[str, ...] = ()
    identity_alignment: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    shape: Shape
    feedback_type: FeedbackType
    feedback_type_raw: str
    version: str | None
    user_agent: str | None
    original_mail_from: str | None
    original_rcpt_to: tuple[str, ...]
    arrival_date: str | None
    source_ip: str | None
    reported_domains: tuple[str, ...]
    reported_uris: tuple[str, ...]
    authentication_results: tuple[str, ...]
    reporting_mta: str | None
    incidents: int | None
    original: OriginalMessage
    human_text: str
    # The report's own From and Return-Path (SES writes the envelope sender there):
    # who says they sent it, not authenticated.
    report_from: str | None
    report_return_path: str | None
    auth: AuthFailure | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        """Who complained, from every place a reporter may put it: Original-Rcpt-To,
        else Microsoft's X-HmXmrOriginalRecipient. Empty when redacted away: the
        caller recovers the recipient from its return-path token or id header."""
        if self.original_rcpt_to:
            return self.original_rcpt_to
        hm = self.original.hm_original_recipient
        return (hm,) if hm else ()


ParseResult = FeedbackReport | Ignored
