"""The mailto unsubscribe intake: mail to an unsubscribe mailto address (an
`[[unsubscribe.domains]]` entry's `mailto`) → what a one-click POST does: the
token's recipient suppressed for its tenant (reason `unsubscribe`) and one
`unsubscribed` event, or nothing when that recipient is unsubscribed already.

In order, cheapest refusal first: the header block only (bounded by
quiver.feedback.limits; the body is never read), then whether the mail is a
request at all, then the token from the Subject (quiver.unsubscribe.mailto), then
its MAC and key (the endpoint's UnsubscribeVerifier, the same key ring). The token
is the authority, as it is for a POST: who sent the mail does not matter, since
anyone holding the token could POST it. Mail that is not a request, or whose token
does not verify, is counted with its reason and changes nothing; nothing is ever
sent in reply.

Not requests: reports (a null envelope sender, RFC 5321 4.5.5, or a
multipart/report body: DSNs, read receipts, ARF) and replies sent by a program
(Auto-Submitted: auto-replied or auto-notified, RFC 3834; the de-facto
X-Autoreply family; Precedence: auto_reply). `Auto-Submitted: auto-generated` is
read as a request: a client that sends the unsubscribe mail for its user's click
may mark it so, and a request lost is worse than one acted on, which its token
alone would allow anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from quiver.feedback.mime import (
    Fields,
    Malformed,
    TooComplex,
    content_type,
    first,
    parse_fields,
    split_head,
)
from quiver.intake.counts import Kind, Outcome
from quiver.intake.mail import InboundMail
from quiver.returnpath.keys import KeyRing
from quiver.storage.base import EventSink, SuppressionStore
from quiver.unsubscribe import apply
from quiver.unsubscribe.mailto import token_from_subject
from quiver.unsubscribe.verify import Refusal, UnsubscribeVerifier

# Fields that programs answering mail by themselves set (the bounce parser reads the
# same ones: quiver.bounce.dsn_autoreply).
_AUTO_REPLY_FIELDS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-auto-response")
# RFC 3834 5: "no" is a person's mail; "auto-generated" see the module's docstring.
_REQUEST_SUBMITTED = ("no", "auto-generated")


class MailtoIntake:
    kind: Kind = "unsubscribe"

    def __init__(self, *, addresses: Iterable[str], keys: KeyRing | Callable[[], KeyRing],
                 suppression: SuppressionStore, sink: EventSink,
                 clock: Callable[[], float] = time.time) -> None:
        # Compared with the envelope recipient SES recorded, lower-cased.
        self.addresses = frozenset(a.lower() for a in addresses)
        # Keys are judged now (a retired key's grace), as the endpoint judges a POST.
        self._verifier = UnsubscribeVerifier(keys=keys, clock=clock)
        self._suppression = suppression
        self._sink = sink

    def addressed(self, mail: InboundMail) -> bool:
        """Whether SES delivered `mail` to one of the mailto addresses."""
        recipient, _ = mail.envelope()
        return recipient is not None and recipient.lower() in self.addresses

    async def process(self, mail: InboundMail) -> Outcome:
        """The unsubscribe a request asks for, or why none. Raises StorageError when a
        store fails (the caller retries the whole object: it is idempotent)."""
        try:
            fields = parse_fields(split_head(mail.raw)[0])
        except TooComplex as exc:
            return Outcome("unsubscribe", "ignored", "too_complex", str(exc))
        except Malformed as exc:
            return Outcome("unsubscribe", "ignored", "malformed", str(exc))
        not_request = _not_a_request(fields)
        if not_request is not None:
            return Outcome("unsubscribe", "ignored", *not_request)
        subject = first(fields, "subject")
        token = token_from_subject(subject)
        if token is None:
            return Outcome("unsubscribe", "ignored", "no_token",
                           f"subject {(subject or '')[:200]!r}")
        verified = self._verifier.verify(token)
        if isinstance(verified, Refusal):
            return Outcome("unsubscribe", "refused", verified.reason, verified.detail)
        who = verified.subject
        changed = await apply.unsubscribe_from_mail(
            who, suppression=self._suppression, events=self._sink, at=mail.stored_at,
            inbound_object=mail.uri, batch_id=mail.identity)
        if not changed:
            return Outcome("unsubscribe", "accepted", "already_unsubscribed", who.message_id)
        return Outcome("unsubscribe", "accepted", "unsubscribed", who.message_id,
                       events=1, suppressed=1)


def _not_a_request(fields: Fields) -> tuple[str, str] | None:
    """(reason, detail) when the mail is a report or a program's reply, else None."""
    sender = first(fields, "return-path")
    if sender is not None and sender.strip() in ("<>", "< >"):
        return "bounce", "null envelope sender: a delivery or disposition report"
    kind, params = content_type(first(fields, "content-type"))
    if kind == "multipart/report":
        return "bounce", f"a {params.get('report-type', 'multipart/report')[:60]} report"
    submitted = (first(fields, "auto-submitted") or "no").split(";")[0].strip().lower()
    if submitted not in _REQUEST_SUBMITTED:
        return "auto_reply", f"Auto-Submitted: {submitted[:60]}"
    for name in _AUTO_REPLY_FIELDS:
        if first(fields, name) is not None:
            return "auto_reply", f"an {name} field"
    if (first(fields, "precedence") or "").strip().lower() == "auto_reply":
        return "auto_reply", "Precedence: auto_reply"
    return None
