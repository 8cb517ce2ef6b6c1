"""Parse an inbound feedback report (RFC 5965 ARF, RFC 6591 auth-failure, and the
shapes Yahoo CFL and Microsoft JMRP send) into a typed `FeedbackReport` or `Ignored`.

Parsing never raises: every input, however hostile, comes back as one of the two
within the bounds of `quiver.feedback.limits`. Nothing here decides whether to
believe the report (see `dkim_check` and `trust`) or which message it is about
(the caller verifies its return-path token or id header from `original`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from quiver.feedback.limits import MAX_HUMAN_TEXT_CHARS, MAX_REPEATED_FIELD, MAX_REPORT_BYTES
from quiver.feedback.mime import (
    Fields,
    Malformed,
    Part,
    TooComplex,
    decode_text,
    every,
    first,
    parse_fields,
    read_part,
    split_head,
)
from quiver.feedback.report import (
    FEEDBACK_TYPES,
    AuthFailure,
    FeedbackReport,
    FeedbackType,
    Ignored,
    OriginalMessage,
    ParseResult,
)

# The header fields that recover the reported message when the return path does
# not: the sender adds one to every message. Callers may name others.
DEFAULT_ID_HEADERS: tuple[str, ...] = ("Quiver-Id",)

# RFC 5965 3.1 defines Version 1. The pre-RFC draft defined 0.1, and Yahoo CFL
# and Microsoft JMRP reports still carry it with the same fields.
SUPPORTED_VERSIONS = ("1", "0.1")

_ORIGINAL_MESSAGE = "message/rfc822"
# text/rfc822-headers is RFC 6522's; message/rfc822-headers is a common misspelling.
_ORIGINAL_HEADERS = ("text/rfc822-headers", "message/rfc822-headers")
_HM_RECIPIENT = "x-hmxmroriginalrecipient"
_ANGLE = re.compile(r"<([^<>]*)>")


def parse_report(
    raw: bytes, *, id_headers: Sequence[str] = DEFAULT_ID_HEADERS
) -> ParseResult:
    """The report in `raw` (the whole inbound message as received), or why not."""
    if len(raw) > MAX_REPORT_BYTES:
        return Ignored("too_large", f"{len(raw)} bytes; the bound is {MAX_REPORT_BYTES}")
    try:
        root = read_part(raw)
        if root.content_type == "multipart/report":
            report_type = root.params.get("report-type", "").lower()
            if report_type != "feedback-report":
                return Ignored("not_arf", f"multipart/report with report-type={report_type!r}")
            return _arf(root, id_headers)
        if root.content_type.startswith("multipart/"):
            return _jmrp_attachment(root, id_headers)
        return Ignored("not_arf", f"a {root.content_type} message, not a multipart report")
    except TooComplex as exc:
        return Ignored("too_complex", str(exc))
    except Malformed as exc:
        return Ignored("malformed", str(exc))


def _arf(root: Part, id_headers: Sequence[str]) -> ParseResult:
    feedback = next(
        (p for p in root.children if p.content_type == "message/feedback-report"), None
    )
    if feedback is None:
        return Ignored("malformed", "no message/feedback-report part")
    fields = parse_fields(feedback.decoded_body(), skip_blank=True)
    type_raw = first(fields, "feedback-type")
    if not type_raw:
        return Ignored("malformed", "the feedback report has no Feedback-Type field")
    version = first(fields, "version")
    if version is None:
        return Ignored("malformed", "the feedback report has no Version field")
    if version not in SUPPORTED_VERSIONS:
        return Ignored(
            "unsupported_version",
            f"Version {version!r}; this parser reads {', '.join(SUPPORTED_VERSIONS)}",
        )
    token = type_raw.split()[0].lower()
    feedback_type: FeedbackType = next((t for t in FEEDBACK_TYPES if t == token), "other")
    incidents = first(fields, "incidents")
    return FeedbackReport(
        shape="arf",
        feedback_type=feedback_type,
        feedback_type_raw=type_raw,
        version=version,
        user_agent=first(fields, "user-agent"),
        original_mail_from=_optional_address(first(fields, "original-mail-from")),
        original_rcpt_to=tuple(
            a for a in (_address(v) for v in _many(fields, "original-rcpt-to")) if a
        ),
        # Received-Date is the draft's name for Arrival-Date (Yahoo, JMRP).
        arrival_date=first(fields, "arrival-date") or first(fields, "received-date"),
        source_ip=first(fields, "source-ip"),
        reported_domains=tuple(v.lower() for v in _many(fields, "reported-domain")),
        reported_uris=_many(fields, "reported-uri"),
        authentication_results=_many(fields, "authentication-results"),
        reporting_mta=first(fields, "reporting-mta"),
        incidents=int(incidents) if incidents and incidents.isdigit() else None,
        original=_original(root.children, id_headers),
        human_text=_human_text(root.children),
        report_from=root.field("from"),
        report_return_path=_optional_address(root.field("return-path")),
        auth=_auth_failure(fields) if feedback_type == "auth-failure" else None,
    )


def _jmrp_attachment(root: Part, id_headers: Sequence[str]) -> ParseResult:
    """Microsoft's "RFC822 Attachment" complaint: a multipart/mixed from
    staff@hotmail.com carrying the reported message, To redacted, the recipient
    in X-HmXmrOriginalRecipient. Any other multipart is not a report."""
    for part in _leaves(root):
        if part.content_type != _ORIGINAL_MESSAGE:
            continue
        head, _ = split_head(part.decoded_body())
        fields = parse_fields(head)
        if first(fields, _HM_RECIPIENT) is None:
            continue
        return FeedbackReport(
            shape="jmrp-attachment",
            # JMRP forwards what a user marked as junk: a complaint.
            feedback_type="abuse",
            feedback_type_raw="abuse",
            version=None,
            user_agent=None,
            original_mail_from=None,
            original_rcpt_to=(),
            arrival_date=None,
            source_ip=None,
            reported_domains=(),
            reported_uris=(),
            authentication_results=(),
            reporting_mta=None,
            incidents=None,
            original=_original_from_fields("message", fields, id_headers),
            human_text=_human_text(root.children),
            report_from=root.field("from"),
            report_return_path=_optional_address(root.field("return-path")),
        )
    return Ignored("not_arf", f"a {root.content_type} message with no report in it")


def _original(parts: tuple[Part, ...], id_headers: Sequence[str]) -> OriginalMessage:
    for part in parts:
        if part.content_type == _ORIGINAL_MESSAGE:
            head, _ = split_head(part.decoded_body())
            return _original_from_fields("message", parse_fields(head), id_headers)
        if part.content_type in _ORIGINAL_HEADERS:
            head, _ = split_head(part.decoded_body())
            return _original_from_fields("headers", parse_fields(head), id_headers)
    return OriginalMessage(form="absent")


def _original_from_fields(
    form: str, fields: Fields, id_headers: Sequence[str]
) -> OriginalMessage:
    wanted = {name.lower(): name for name in id_headers}
    return OriginalMessage(
        form="message" if form == "message" else "headers",
        message_id=first(fields, "message-id"),
        return_path=_optional_address(first(fields, "return-path")),
        from_=first(fields, "from"),
        to=every(fields, "to")[:MAX_REPEATED_FIELD],
        subject=first(fields, "subject"),
        list_unsubscribe=first(fields, "list-unsubscribe"),
        id_headers=tuple(
            (wanted[key.lower()], value) for key, value in fields if key.lower() in wanted
        )[:MAX_REPEATED_FIELD],
        hm_original_recipient=_optional_address(first(fields, _HM_RECIPIENT)),
    )


def _human_text(parts: tuple[Part, ...]) -> str:
    for part in parts:
        for leaf in _leaves(part):
            if leaf.content_type == "text/plain":
                text = decode_text(leaf.decoded_body(), leaf.params.get("charset"))
                return text[:MAX_HUMAN_TEXT_CHARS]
        if part.content_type == "message/feedback-report":
            break  # the human part comes first (RFC 5965 2 (b))
    return ""


def _leaves(part: Part) -> list[Part]:
    if not part.children:
        return [part]
    return [leaf for child in part.children for leaf in _leaves(child)]


def _auth_failure(fields: Fields) -> AuthFailure:
    return AuthFailure(
        auth_failure=first(fields, "auth-failure"),
        delivery_result=first(fields, "delivery-result"),
        dkim_domain=first(fields, "dkim-domain"),
        dkim_selector=first(fields, "dkim-selector"),
        dkim_identity=first(fields, "dkim-identity"),
        spf_dns=_many(fields, "spf-dns"),
        identity_alignment=first(fields, "identity-alignment"),
    )


def _many(fields: Fields, name: str) -> tuple[str, ...]:
    return every(fields, name)[:MAX_REPEATED_FIELD]


def _address(value: str) -> str:
    """`<a@b>` or `a@b` (or `Name <a@b>`) as `a@b`; `<>` (the null path) as ''."""
    found = _ANGLE.search(value)
    return (found.group(1) if found else value).strip()


def _optional_address(value: str | None) -> str | None:
    return None if value is None else _address(value)
