"""The FBL intake: an ARF report about a message of ours → a `complaint` event and a
suppression entry, when the report is trusted.

In order, cheapest refusal first: parse (bounded), find the message by a signed
return path in the report (the original's Return-Path, then Original-Mail-From;
an HMAC, no lookup for a forgery), verify the reporter's DKIM signature (DNS), and
ask the [feedback] policy whether the report may act. A report that may not is
counted (`untrusted`, with the decision's reason) and stays in the inbound bucket
for its expiry; it publishes nothing and suppresses nobody, so a stranger who
mails the FBL address cannot move complaint rates or suppress anyone.

An acted-on complaint is counted against its (tenant, campaign, provider), the
complaint rate's numerator (quiver.complaint_rate). The provider is not kept with
the return-path reference: the sender stores that record before the transaction,
and the route that names the provider is resolved afterwards, by the scheduler, for
each attempt; recording it after delivery would cost a second write per delivered
recipient, for a count that perhaps one delivery in a thousand ever needs. The intake resolves
the recipient's domain the way the sender does instead (the same MX resolution and
the policy's provider patterns): one lookup per trusted complaint, after every
cheaper refusal. It names the provider now, which differs from the one at delivery
only if the domain moved its mail in between; a domain with no route now is `none`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence

from quiver.addresses import domain_of
from quiver.complaint_rate import RateKey
from quiver.feedback.arf import DEFAULT_ID_HEADERS, parse_report
from quiver.feedback.dkim_check import DnsFunc, verify_report_dkim
from quiver.feedback.limits import MAX_REPORT_BYTES
from quiver.feedback.report import Ignored
from quiver.feedback.trust import decide
from quiver.intake.counts import Kind, Outcome
from quiver.intake.mail import InboundMail
from quiver.intake.records import complaint_event
from quiver.intake.recover import recover
from quiver.intake.suppress import entry as suppression_entry
from quiver.policy.feedback import FeedbackPolicy
from quiver.policy.model import Source
from quiver.returnpath import Refusal, ReturnPathVerifier
from quiver.storage.base import EventSink, SuppressionStore

# A recipient domain → the policy's provider for it (routing.mx.MxResolver.provider).
ProviderOf = Callable[[str], Awaitable[str | None]]
# A report's Source-IP → the policy's source with that `ip`, if any.
SourceOf = Callable[[str | None], str | None]


def source_by_ip(sources: Mapping[str, Source]) -> SourceOf:
    """The source a report names by its Source-IP: the address the reporter's MX saw
    the message come from, which is a source's public `ip`. The reporter's word, but
    only a trusted reporter's report is counted, and it moves no mail: it says which
    IP the complaints come in on."""
    by_ip: dict[str, str] = {}
    for name, source in sources.items():
        try:
            by_ip[str(ipaddress.ip_address(source.ip))] = name
        except ValueError:
            continue

    def source_of(ip: str | None) -> str | None:
        if not ip:
            return None
        try:
            return by_ip.get(str(ipaddress.ip_address(ip.strip().strip("[]"))))
        except ValueError:
            return None

    return source_of


class ComplaintIntake:
    kind: Kind = "complaint"
    # Larger objects are not read (counted as ignored, too_large): the parser's bound.
    max_bytes = MAX_REPORT_BYTES

    def __init__(self, *, verifier: ReturnPathVerifier, suppression: SuppressionStore,
                 sink: EventSink, policy: FeedbackPolicy, dnsfunc: DnsFunc,
                 provider_of: ProviderOf, source_of: SourceOf = lambda _: None,
                 id_headers: Sequence[str] = DEFAULT_ID_HEADERS) -> None:
        self._verifier = verifier
        self._suppression = suppression
        self._sink = sink
        self._policy = policy
        self._dnsfunc = dnsfunc
        self._provider_of = provider_of
        self._source_of = source_of
        self._id_headers = id_headers

    async def process(self, mail: InboundMail) -> Outcome:
        """Events and suppression for one stored report, or why none. Raises
        StorageError when a store fails (the caller retries: it is idempotent)."""
        report = parse_report(mail.raw, id_headers=self._id_headers)
        if isinstance(report, Ignored):
            return Outcome("complaint", "ignored", report.reason, report.detail)
        found = recover(self._verifier,
                        [report.original.return_path, report.original_mail_from])
        if isinstance(found, Refusal):
            return Outcome("complaint", "refused", found.reason, found.detail)
        dkim = verify_report_dkim(mail.raw, dnsfunc=self._dnsfunc)
        _, envelope_sender = mail.envelope()
        decision = decide(report, dkim, policy=self._policy,
                          envelope_sender=envelope_sender or report.report_return_path)
        if decision.action != "act" or decision.reporter is None:
            return Outcome("complaint", "untrusted", decision.reason, decision.detail)
        event = complaint_event(verified=found, at=mail.stored_at, inbound_object=mail.uri,
                                feedback_type=report.feedback_type,
                                reporter=decision.reporter)
        await self._suppression.put(suppression_entry(
            found, reason="complaint", at=mail.stored_at, event="complaint",
            detail=f"{report.feedback_type} reported by {decision.reporter}"))
        await self._sink.publish([event], batch_id=mail.identity)
        # After the durable work: a slow or failing lookup delays no event, and only
        # ever costs the count its provider.
        provider = await self._provider_of(domain_of(found.recipient))
        return Outcome("complaint", "accepted", decision.reason,
                       f"{report.feedback_type} {found.message_id}", events=1, suppressed=1,
                       complaint=RateKey.of(tenant=found.tenant, campaign=found.campaign,
                                            provider=provider),
                       source=self._source_of(report.source_ip))
