"""The bounce intake: a DSN (or a text bounce) that came back to a signed return path
→ one `async_bounce` event for the recipient the token names, and a suppression
entry when the failure is hard. A VERP address is one recipient's, so one report
is about one recipient of ours: the report's entry for it (by Final- or
Original-Recipient), else its first entry (where that recipient forwarded to).

Only the verified return path says whose bounce it is: the recipient suppressed is
the one the token's stored record names, never an address the report's text names
(anyone can write a DSN; only our token proves it is about our message).
"""

from __future__ import annotations

from collections.abc import Callable

from quiver.bounce.classify import Classifier, default_classifier
from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_limits import MAX_INPUT_BYTES
from quiver.bounce.dsn_types import BounceReport, FailedRecipient, Ignored, ParseResult
from quiver.events import Dsn
from quiver.intake.counts import Kind, Outcome
from quiver.intake.mail import InboundMail
from quiver.intake.records import async_bounce_event
from quiver.intake.recover import recover
from quiver.intake.suppress import entry as suppression_entry
from quiver.returnpath import Refusal, ReturnPathVerifier, Verified
from quiver.storage.base import EventSink, SuppressionStore

# The classifier's verdict that suppresses: the address does not exist or never will
# accept mail. Soft failures, policy blocks and undetermined ones suppress nobody.
SUPPRESSING_KIND = "hard"


class BounceIntake:
    kind: Kind = "bounce"
    # Larger objects are not read (counted as ignored, too_large): the parser's bound.
    max_bytes = MAX_INPUT_BYTES

    def __init__(self, *, verifier: ReturnPathVerifier, suppression: SuppressionStore,
                 sink: EventSink, classifier: Classifier | None = None,
                 parse: Callable[..., ParseResult] = parse_bounce) -> None:
        self._verifier = verifier
        self._suppression = suppression
        self._sink = sink
        self._classifier = classifier or default_classifier()
        self._parse = parse

    async def process(self, mail: InboundMail) -> Outcome:
        """Events and suppression for one stored mail, or why none. Raises StorageError
        when a store fails (the caller retries the whole object: it is idempotent)."""
        result = self._parse(mail.raw, classifier=self._classifier)
        if isinstance(result, Ignored):
            return Outcome("bounce", "ignored", str(result.reason), result.detail)
        recipient, _ = mail.envelope()
        found = recover(self._verifier, [recipient, result.addressed_to, result.original_sender])
        if isinstance(found, Refusal):
            return Outcome("bounce", "refused", found.reason, found.detail)
        failed = _ours(result, found)
        event = async_bounce_event(
            verified=found, at=mail.stored_at, inbound_object=mail.uri,
            bounce=failed.classification.as_event(),
            dsn=_dsn(failed, result),
        )
        hard = failed.classification.kind == SUPPRESSING_KIND
        if hard:
            await self._suppression.put(suppression_entry(
                found, reason="hard_bounce", at=mail.stored_at, event="async_bounce",
                detail=failed.diagnostic or failed.status or ""))
        await self._sink.publish([event], batch_id=mail.identity)
        return Outcome("bounce", "accepted", failed.classification.kind,
                       f"{failed.status or '-'} {found.message_id}", events=1,
                       suppressed=int(hard))


def _ours(report: BounceReport, verified: Verified) -> FailedRecipient:
    """The report's entry for the token's recipient (by Final- or Original-Recipient);
    else its first: a VERP address is one recipient's, so a different name there is
    where that recipient forwarded to."""
    wanted = verified.recipient.lower()
    for failed in report.recipients:
        names = (failed.recipient, failed.original_recipient or "")
        if any(name.lower() == wanted for name in names):
            return failed
    return report.recipients[0]


def _dsn(failed: FailedRecipient, report: BounceReport) -> Dsn:
    return {
        "recipient": failed.recipient,
        "status": failed.status,
        "diagnostic_code": failed.diagnostic,
        "remote_mta": failed.remote_mta,
        "reporting_mta": report.reporting_mta,
        "format": report.format,
    }
