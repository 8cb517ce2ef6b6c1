"""Whether a parsed, DKIM-checked feedback report may act (suppress, emit a complaint)
or is only counted and kept, by the `[feedback]` policy section.

A report can be sent by anyone to the FBL address; acting on a forged one would
let a stranger suppress any recipient. So a report acts only when a trusted
reporter vouches for it (see quiver.policy.feedback), for a feedback type the
policy acts on, and about our own mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quiver.feedback.dkim_check import DkimVerdict
from quiver.feedback.report import FeedbackReport
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter

Action = Literal["act", "keep_only"]
DecisionReason = Literal[
    "trusted_dkim",        # act: verified signature of a trusted reporter's domain
    "trusted_envelope",    # act: a require_dkim = false entry matched the envelope sender
    "type_not_acted_on",   # keep: e.g. not-spam, auth-failure
    "not_our_domain",      # keep: Reported-Domain names none of own_domains
    "untrusted_signer",    # keep: DKIM verified, but for a domain no entry trusts
    "dkim_failed",         # keep: a signature that did not verify, no other trust
    "unsigned",            # keep: no signature, no other trust
]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: DecisionReason
    detail: str
    # The trusted_reporters entry that vouched (its domain); None when kept only.
    reporter: str | None = None


def decide(
    report: FeedbackReport,
    dkim: DkimVerdict,
    *,
    policy: FeedbackPolicy,
    envelope_sender: str | None,
) -> Decision:
    """`envelope_sender` is the report's SMTP MAIL FROM (SES writes it as the stored
    message's Return-Path); None when unknown."""
    if report.feedback_type not in policy.act_on:
        return Decision("keep_only", "type_not_acted_on",
                        f"Feedback-Type {report.feedback_type!r} is not in feedback.act_on")
    if policy.own_domains and report.reported_domains and not any(
        _under(domain, own) for domain in report.reported_domains for own in policy.own_domains
    ):
        return Decision("keep_only", "not_our_domain",
                        f"Reported-Domain {', '.join(report.reported_domains)} is none of "
                        "feedback.own_domains")
    if dkim.status == "verified" and dkim.domain:
        signer = _entry_for(dkim.domain, policy.trusted_reporters)
        if signer is not None:
            return Decision("act", "trusted_dkim",
                            f"DKIM verified for d={dkim.domain}", signer.domain)
    sender_domain = _domain_of(envelope_sender)
    for entry in policy.trusted_reporters:
        if entry.require_dkim or sender_domain is None or not _under(sender_domain, entry.domain):
            continue
        if entry.user_agents and not (
            report.user_agent and report.user_agent.startswith(entry.user_agents)
        ):
            continue
        return Decision("act", "trusted_envelope",
                        f"envelope sender domain {sender_domain} is trusted without DKIM "
                        f"(DKIM {dkim.status}: {dkim.reason})", entry.domain)
    if dkim.status == "verified":
        return Decision("keep_only", "untrusted_signer",
                        f"DKIM verified for d={dkim.domain}, which no trusted_reporters "
                        "entry names")
    if dkim.status == "failed":
        return Decision("keep_only", "dkim_failed", f"DKIM failed: {dkim.reason}")
    return Decision("keep_only", "unsigned",
                    "no DKIM signature, and no require_dkim = false entry matches the "
                    f"envelope sender {envelope_sender or '(unknown)'}")


def _entry_for(domain: str, entries: tuple[TrustedReporter, ...]) -> TrustedReporter | None:
    return next((e for e in entries if _under(domain, e.domain)), None)


def _under(domain: str, parent: str) -> bool:
    """`domain` is `parent` or a subdomain of it (label-wise: evilyahoo.com is not)."""
    domain = domain.lower().rstrip(".")
    return domain == parent or domain.endswith("." + parent)


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1].strip().strip(">").lower().rstrip(".")
    return domain or None
