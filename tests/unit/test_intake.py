"""The bounce and FBL intakes on in-memory stores: what becomes an event and a
suppression entry, what is dropped and why, and that an object processed twice
exports one set of events."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from arf_signing import ReporterKey, TxtTable, new_key
from hypothesis import given, settings
from hypothesis import strategies as st
from inbound_mail import (
    BOUNCE_DOMAIN,
    BOUNCE_FIXTURES,
    DAY,
    FBL_ADDRESS,
    T0,
    Clock,
    Verp,
    arf,
    dsn,
    forged,
    ring,
    ses_stored,
)

from quiver.complaint_rate import RateKey
from quiver.events import validate_record
from quiver.intake.bounce import BounceIntake
from quiver.intake.complaint import ComplaintIntake, source_by_ip
from quiver.intake.counts import IntakeCounts, Outcome
from quiver.intake.mail import InboundMail
from quiver.policy.feedback import FeedbackPolicy, TrustedReporter
from quiver.policy.model import Source
from quiver.returnpath import RETIRED_GRACE, ReturnPathVerifier
from quiver.storage.base import ALL_TENANTS
from quiver.storage.memory import MemoryEventSink, MemorySuppression

RCPT = "Ann.Lee@example.org"
STORED_AT = T0 + 3600.5


def stored(raw: bytes, key: str = "bounce/obj-1") -> InboundMail:
    return InboundMail(bucket="inbound", key=key, raw=raw, stored_at=STORED_AT)


class Rig:
    def __init__(self, verp: Verp, clock: Clock) -> None:
        self.verp = verp
        self.sink = MemoryEventSink()
        self.suppression = MemorySuppression(clock=clock)
        self.bounces = BounceIntake(verifier=verp.verifier, suppression=self.suppression,
                                    sink=self.sink)

    def bounce(self, raw: bytes, key: str = "bounce/obj-1") -> Outcome:
        return asyncio.run(self.bounces.process(stored(raw, key)))

    def suppressed(self, address: str, tenant: str | None = "acme") -> list[str]:
        found = asyncio.run(self.suppression.lookup([address], tenant=tenant))
        return [f"{e.tenant}:{e.reason}" for e in found.values()]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rig(clock: Clock) -> Rig:
    return Rig(Verp(clock=clock), clock)


def test_a_hard_bounce_is_an_event_and_suppresses_the_recipient_for_its_tenant(rig: Rig) -> None:
    address = rig.verp.address(message_id="m-1", recipient=RCPT)
    outcome = rig.bounce(dsn(return_path=address, recipient=RCPT))
    assert (outcome.outcome, outcome.reason, outcome.events, outcome.suppressed) == (
        "accepted", "hard", 1, 1)
    (event,) = rig.sink.records
    validate_record(event)
    assert event["event"] == "async_bounce"
    assert event["at"] == "2026-09-21T15:13:20.500Z"
    assert (event["id"], event["rcpt"], event["tenant"], event["campaign"]) == (
        "m-1", RCPT, "acme", "december")
    assert (event["from"], event["pool"], event["meta"], event["attempt"]) == (None, None, {}, 0)
    assert event["bounce"]["kind"] == "hard"
    assert event["bounce"]["category"] == "bad-mailbox"
    assert event["dsn"] == {
        "recipient": RCPT, "status": "5.1.1",
        "diagnostic_code": f"smtp; 550 5.1.1 <{RCPT}>: Recipient address rejected: "
                           "User unknown",
        "remote_mta": "mailstore.example.org", "reporting_mta": "mx2.example.org",
        "format": "rfc3464"}
    assert event["inbound_object"] == "s3://inbound/bounce/obj-1"
    assert rig.suppressed(RCPT) == ["acme:hard_bounce"]
    (entry,) = rig.suppression.entries.values()
    assert (entry.address, entry.created_at) == (RCPT.lower(), STORED_AT)
    assert entry.source == ("async_bounce m-1 at 2026-09-21T15:13:20.500Z: smtp; 550 5.1.1 "
                            f"<{RCPT}>: Recipient address rejected: User unknown")
    # Tenant scope: another tenant may still mail the address.
    assert rig.suppressed(RCPT, tenant="globex") == []


def test_a_message_without_a_tenant_suppresses_for_every_tenant(rig: Rig) -> None:
    address = rig.verp.address(message_id="m-2", recipient=RCPT, tenant=None)
    rig.bounce(dsn(return_path=address, recipient=RCPT))
    assert rig.suppressed(RCPT, tenant="globex") == [f"{ALL_TENANTS}:hard_bounce"]


@pytest.mark.parametrize(("status", "diagnostic", "kind"), [
    ("5.2.2", "smtp; 552 5.2.2 Mailbox full", "soft"),
    ("5.7.1", "smtp; 550 5.7.1 Message rejected as spam", "block"),
])
def test_soft_and_block_bounces_are_events_that_suppress_nobody(
        rig: Rig, status: str, diagnostic: str, kind: str) -> None:
    address = rig.verp.address(message_id="m-3", recipient=RCPT)
    outcome = rig.bounce(dsn(return_path=address, recipient=RCPT, status=status,
                             diagnostic=diagnostic))
    assert (outcome.outcome, outcome.reason, outcome.suppressed) == ("accepted", kind, 0)
    assert [e["bounce"]["kind"] for e in rig.sink.records] == [kind]
    assert rig.suppressed(RCPT) == []


@pytest.mark.parametrize("fixture", [
    "rfc3464_gmail_no_such_user.eml", "rfc3464_office365_recipient_not_found.eml",
    "rfc3464_exim_user_unknown.eml", "text_qmail_no_mailbox.eml",
    "text_exchange_de.eml", "text_sendmail_user_unknown.eml",
])
def test_bounces_in_the_common_formats_reach_the_token_s_recipient(
        rig: Rig, fixture: str) -> None:
    address = rig.verp.address(message_id="m-4", recipient=RCPT)
    raw = ses_stored((BOUNCE_FIXTURES / fixture).read_bytes(), recipient=address)
    outcome = rig.bounce(raw)
    assert outcome.outcome == "accepted", outcome
    (event,) = rig.sink.records
    # Whoever the report names, the event and the suppression are the token's.
    assert (event["id"], event["rcpt"]) == ("m-4", RCPT)
    assert rig.suppressed(RCPT) == (["acme:hard_bounce"] if event["bounce"]["kind"] == "hard"
                                    else [])


@pytest.mark.parametrize("fixture", ["ooo_en.eml", "autoreply_rfc3834.eml",
                                     "challenge_boxbe.eml", "rfc3464_postfix_delayed.eml"])
def test_auto_replies_challenges_and_delays_are_ignored_with_their_reason(
        rig: Rig, fixture: str) -> None:
    address = rig.verp.address(message_id="m-5", recipient=RCPT)
    outcome = rig.bounce(ses_stored((BOUNCE_FIXTURES / fixture).read_bytes(),
                                    recipient=address))
    assert outcome.outcome == "ignored"
    assert outcome.reason in {"auto_reply", "out_of_office", "challenge_response",
                              "delay_only"}
    assert rig.sink.records == []
    assert rig.suppressed(RCPT) == []


def test_a_forged_bounce_is_refused_bad_hmac(rig: Rig) -> None:
    address = forged(rig.verp.address(message_id="m-6", recipient=RCPT))
    outcome = rig.bounce(dsn(return_path=address, recipient=RCPT))
    assert (outcome.outcome, outcome.reason) == ("refused", "bad_hmac")
    assert rig.sink.records == []
    assert rig.suppressed(RCPT) == []


def test_a_token_of_a_key_retired_past_the_grace_is_refused_expired_key(clock: Clock) -> None:
    rig = Rig(Verp(clock=clock), clock)
    address = rig.verp.address(message_id="m-7", recipient=RCPT)
    # The intake's ring has that key retired longer ago than the grace.
    stale = ReturnPathVerifier(keys=ring(retired=T0 - RETIRED_GRACE - DAY),
                               store=rig.verp.store, bounce_domains={BOUNCE_DOMAIN: None},
                               clock=clock)
    rig.bounces = BounceIntake(verifier=stale, suppression=rig.suppression, sink=rig.sink)
    outcome = rig.bounce(dsn(return_path=address, recipient=RCPT))
    assert (outcome.outcome, outcome.reason) == ("refused", "expired_key")
    assert rig.sink.records == []
    assert rig.suppressed(RCPT) == []


def test_a_token_of_another_tenant_is_refused_other_tenant(clock: Clock) -> None:
    rig = Rig(Verp(clock=clock, tenants=frozenset({"acme"})), clock)
    address = rig.verp.address(message_id="m-8", recipient=RCPT, tenant="globex")
    outcome = rig.bounce(dsn(return_path=address, recipient=RCPT))
    assert (outcome.outcome, outcome.reason) == ("refused", "other_tenant")
    assert rig.sink.records == []
    assert rig.suppressed(RCPT, tenant="globex") == []


def test_a_bounce_to_an_unsigned_address_is_refused(rig: Rig) -> None:
    outcome = rig.bounce(dsn(return_path="bounces@example.com", recipient=RCPT))
    assert (outcome.outcome, outcome.reason) == ("refused", "wrong_domain")
    outcome = rig.bounce(dsn(return_path="someone@bounces.example.com", recipient=RCPT))
    assert (outcome.outcome, outcome.reason) == ("refused", "malformed")
    assert rig.sink.records == []


def test_a_forged_envelope_does_not_hide_a_good_token_in_the_report(rig: Rig) -> None:
    """SES's Received names the envelope recipient; a report delivered to an address
    that is not a token (a catch-all) still verifies by the token it carries."""
    address = rig.verp.address(message_id="m-9", recipient=RCPT)
    raw = dsn(return_path=address, recipient=RCPT)
    raw = raw.replace(f"for {address};".encode(), b"for postmaster@bounces.example.com;", 1)
    assert rig.bounce(raw).outcome == "accepted"


def test_the_same_object_twice_exports_one_set_of_events(rig: Rig) -> None:
    address = rig.verp.address(message_id="m-10", recipient=RCPT)
    raw = dsn(return_path=address, recipient=RCPT)
    first, second = rig.bounce(raw), rig.bounce(raw)
    assert first == second
    (one, one_records), (two, two_records) = rig.sink.published
    assert one == two and one is not None
    assert one_records == two_records
    assert len(rig.sink.exported()) == 1
    assert rig.suppressed(RCPT) == ["acme:hard_bounce"]
    # Another object (another key) is another bounce.
    rig.bounce(raw, key="bounce/obj-2")
    assert len(rig.sink.exported()) == 2


def test_a_store_failure_raises_and_the_retry_publishes_the_same_batch(rig: Rig) -> None:
    address = rig.verp.address(message_id="m-11", recipient=RCPT)
    raw = dsn(return_path=address, recipient=RCPT)
    rig.sink.fail_next = 1
    with pytest.raises(Exception, match="unavailable"):
        rig.bounce(raw)
    assert rig.bounce(raw).outcome == "accepted"
    assert len(rig.sink.exported()) == 1


# Complaints ---------------------------------------------------------------------

YAHOO = new_key("yahoo.com")
TRUSTED = FeedbackPolicy(trusted_reporters=(TrustedReporter("yahoo.com"),),
                         own_domains=("example.com",))


class Providers:
    """Recipient domains' providers, as MxResolver.provider answers them; records
    what was asked."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, domain: str) -> str | None:
        self.asked.append(domain)
        return self.table.get(domain)


class FblRig(Rig):
    def __init__(self, verp: Verp, clock: Clock, *, policy: FeedbackPolicy = TRUSTED,
                 keys: tuple[ReporterKey, ...] = (YAHOO,)) -> None:
        super().__init__(verp, clock)
        self.providers = Providers({"example.org": "yahoo"})
        self.complaints = ComplaintIntake(
            verifier=verp.verifier, suppression=self.suppression, sink=self.sink,
            policy=policy, dnsfunc=TxtTable(*keys), provider_of=self.providers)

    def complain(self, raw: bytes) -> Outcome:
        return asyncio.run(self.complaints.process(stored(raw, "fbl/obj-1")))


def report(address: str, *, key: ReporterKey | None = YAHOO, sender: str = "fbl@yahoo.com",
           feedback_type: str = "abuse") -> bytes:
    raw = arf(return_path=address, recipient=RCPT, feedback_type=feedback_type)
    if key is not None:
        raw = key.sign(raw)
    return ses_stored(raw, recipient=FBL_ADDRESS, sender=sender)


@pytest.fixture
def fbl(clock: Clock) -> FblRig:
    return FblRig(Verp(clock=clock), clock)


def test_a_trusted_complaint_is_an_event_and_suppresses_the_complainer(fbl: FblRig) -> None:
    address = fbl.verp.address(message_id="m-20", recipient=RCPT)
    outcome = fbl.complain(report(address))
    assert (outcome.outcome, outcome.reason, outcome.suppressed) == (
        "accepted", "trusted_dkim", 1)
    (event,) = fbl.sink.records
    validate_record(event)
    assert (event["event"], event["id"], event["rcpt"], event["tenant"]) == (
        "complaint", "m-20", RCPT, "acme")
    assert (event["feedback_type"], event["reporter"]) == ("abuse", "yahoo.com")
    assert fbl.suppressed(RCPT) == ["acme:complaint"]
    (entry,) = fbl.suppression.entries.values()
    assert entry.source == "complaint m-20 at 2026-09-21T15:13:20.500Z: abuse reported by yahoo.com"


def test_a_trusted_complaint_counts_against_its_tenant_campaign_and_provider(
        fbl: FblRig) -> None:
    address = fbl.verp.address(message_id="m-24", recipient=RCPT)
    outcome = fbl.complain(report(address))
    assert outcome.complaint == RateKey("acme", "december", "yahoo")
    # The recipient's domain, which the sender routed the message by.
    assert fbl.providers.asked == ["example.org"]


def test_a_complaint_without_tenant_campaign_or_known_provider_counts_as_none(
        fbl: FblRig) -> None:
    fbl.providers.table.clear()  # no provider of the policy, or no route now
    address = fbl.verp.address(message_id="m-25", recipient=RCPT, tenant=None, campaign=None)
    outcome = fbl.complain(report(address))
    assert outcome.outcome == "accepted"
    assert outcome.complaint == RateKey("none", "none", "none")


@pytest.mark.parametrize(("raw_for", "reason"), [
    (lambda a: report(a, key=None), "unsigned"),
    (lambda a: report(a, key=new_key("yahoo.com")), "dkim_failed"),  # key not published
    (lambda a: report(a, key=new_key("example.net")), "dkim_failed"),
    (lambda a: report(a, feedback_type="not-spam"), "type_not_acted_on"),
])
def test_untrusted_reports_are_counted_and_act_on_nothing(
        fbl: FblRig, raw_for: object, reason: str) -> None:
    address = fbl.verp.address(message_id="m-21", recipient=RCPT)
    assert callable(raw_for)
    outcome = fbl.complain(raw_for(address))
    assert (outcome.outcome, outcome.reason) == ("untrusted", reason)
    assert fbl.sink.records == []
    assert fbl.suppressed(RCPT) == []
    # Counted in no complaint rate, and worth no lookup.
    assert outcome.complaint is None and fbl.providers.asked == []


def test_a_complaint_with_a_forged_token_is_refused_before_dkim(clock: Clock) -> None:
    dns = TxtTable(YAHOO)
    rig = FblRig(Verp(clock=clock), clock)
    rig.complaints = ComplaintIntake(verifier=rig.verp.verifier, suppression=rig.suppression,
                                     sink=rig.sink, policy=TRUSTED, dnsfunc=dns,
                                     provider_of=rig.providers)
    address = forged(rig.verp.address(message_id="m-22", recipient=RCPT))
    outcome = rig.complain(report(address))
    assert (outcome.outcome, outcome.reason) == ("refused", "bad_hmac")
    assert dns.asked == [] and rig.providers.asked == []  # a forgery costs no DNS lookup
    assert rig.sink.records == [] and rig.suppressed(RCPT) == []


def test_something_that_is_no_report_is_ignored(fbl: FblRig) -> None:
    outcome = fbl.complain(ses_stored(b"Subject: hello\r\n\r\nhi\r\n", recipient=FBL_ADDRESS))
    assert (outcome.outcome, outcome.reason) == ("ignored", "not_arf")


def test_a_trusted_envelope_reporter_acts_without_dkim(clock: Clock) -> None:
    policy = FeedbackPolicy(trusted_reporters=(
        TrustedReporter("hotmail.com", require_dkim=False),))
    rig = FblRig(Verp(clock=clock), clock, policy=policy, keys=())
    address = rig.verp.address(message_id="m-23", recipient=RCPT)
    outcome = rig.complain(report(address, key=None, sender="staff@hotmail.com"))
    assert (outcome.outcome, outcome.reason) == ("accepted", "trusted_envelope")
    assert rig.sink.records[0]["reporter"] == "hotmail.com"


# Counting -------------------------------------------------------------------------

def test_counts_are_emitted_as_emf_per_kind_outcome_and_reason() -> None:
    counts = IntakeCounts()
    for outcome in (Outcome("bounce", "refused", "bad_hmac"),
                    Outcome("bounce", "refused", "bad_hmac"),
                    Outcome("complaint", "untrusted", "unsigned")):
        counts.count(outcome)
    out = io.StringIO()
    assert counts.flush(out) == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines() if line]
    assert [(d["kind"], d["reason"], d.get("inbound_refused"), d.get("inbound_untrusted"))
            for d in docs] == [("bounce", "bad_hmac", 2, None),
                               ("complaint", "unsigned", None, 1)]
    assert {d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in docs} == {"Quiver"}
    # Exactly the documented dimensions, also in Lambda, where Powertools' metrics
    # would add `service` (POWERTOOLS_SERVICE_NAME) and the alarms would miss them.
    assert [d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] for d in docs] == [
        [["kind", "reason"]], [["kind", "reason"]]]
    assert counts.flush(io.StringIO()) == 0  # flushed counts start again from zero


def test_accepted_complaints_are_emf_per_tenant_campaign_and_provider_per_flush() -> None:
    counts = IntakeCounts(clock=lambda: 1_790_000_000.25)
    acme = RateKey("acme", "december", "yahoo")
    nobody = RateKey.of(tenant=None, campaign=None, provider=None)
    for outcome in (Outcome("complaint", "accepted", "trusted_dkim", complaint=acme),
                    Outcome("complaint", "accepted", "trusted_dkim", complaint=acme),
                    Outcome("complaint", "accepted", "trusted_envelope", complaint=nobody),
                    Outcome("complaint", "untrusted", "unsigned")):
        counts.count(outcome)
    out = io.StringIO()
    # Three (kind, outcome, reason) documents, two per (source, provider) and two
    # complaint-rate documents: one per key.
    assert counts.flush(out) == 7
    docs = [json.loads(line) for line in out.getvalue().splitlines() if line]
    rate = [d for d in docs if "complaints" in d and "tenant" in d]
    assert [(d["tenant"], d["campaign"], d["provider"], d["complaints"]) for d in rate] == [
        ("acme", "december", "yahoo", 2), ("none", "none", "none", 1)]
    for d in rate:
        assert d["_aws"]["Timestamp"] == 1_790_000_000_250
        assert d["_aws"]["CloudWatchMetrics"] == [{
            "Namespace": "Quiver",
            "Dimensions": [["tenant", "campaign", "provider"], ["tenant"], ["provider"], []],
            "Metrics": [{"Name": "complaints", "Unit": "Count"}]}]
    assert counts.flush(io.StringIO()) == 0


# Hostile input ---------------------------------------------------------------------

_FIELDS = st.sampled_from([
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=B",
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=B",
    b"Content-Type: message/delivery-status", b"Content-Type: message/feedback-report",
    b"Content-Type: text/rfc822-headers", b"Content-Type: message/rfc822",
    b"Final-Recipient: rfc822; ann@example.org", b"Action: failed", b"Status: 5.1.1",
    b"Feedback-Type: abuse", b"Version: 1", b"Return-Path: <b-aaaa@bounces.example.com>",
    b"Original-Mail-From: <x@bounces.example.com>", b"Auto-Submitted: auto-replied",
    b"Received: from x by y for <b-zz@bounces.example.com>;", b"--B", b"--B--", b"",
])


@settings(max_examples=150)
@given(st.lists(_FIELDS | st.binary(max_size=80), max_size=40))
def test_hostile_mail_gives_an_outcome_never_an_exception_nor_an_unsigned_event(
        lines: list[bytes]) -> None:
    clock = Clock()
    rig = FblRig(Verp(clock=clock), clock)
    raw = b"\r\n".join(lines)
    for outcome in (rig.bounce(raw), rig.complain(raw)):
        assert outcome.outcome in ("ignored", "refused", "untrusted")
    assert rig.sink.records == []
    assert rig.suppression.entries == {}


def test_accepted_complaints_are_counted_per_source_by_the_reports_source_ip() -> None:
    counts = IntakeCounts(clock=lambda: 1_790_000_000.0)
    yahoo = RateKey("acme", "december", "yahoo")
    for outcome in (Outcome("complaint", "accepted", "trusted_dkim", complaint=yahoo,
                            source="tx1"),
                    Outcome("complaint", "accepted", "trusted_dkim", complaint=yahoo,
                            source="tx1"),
                    Outcome("complaint", "accepted", "trusted_dkim", complaint=yahoo),
                    Outcome("complaint", "untrusted", "unsigned", source="tx1")):
        counts.count(outcome)
    out = io.StringIO()
    counts.flush(out)
    docs = [json.loads(line) for line in out.getvalue().splitlines() if line]
    by_source = [d for d in docs if "source" in d]
    assert [(d["source"], d["provider"], d["complaints"]) for d in by_source] == [
        ("none", "yahoo", 1), ("tx1", "yahoo", 2)]
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["source", "provider"]]
               for d in by_source)


def test_a_reports_source_ip_names_the_source_with_that_address() -> None:
    sources = {"tx1": Source(name="tx1", ip="198.51.100.7", ehlo="o1.example.com", az="a"),
               "tx6": Source(name="tx6", ip="2001:db8::25", ehlo="o6.example.com", az="b")}
    source_of = source_by_ip(sources)
    assert source_of("198.51.100.7") == "tx1"
    assert source_of(" 198.51.100.7 ") == "tx1"
    assert source_of("2001:0db8:0:0:0:0:0:25") == "tx6"  # the same address, spelt out
    assert source_of("[2001:db8::25]") == "tx6"
    assert source_of("203.0.113.9") is None  # not ours: another sender's mail
    assert source_of("not an address") is None
    assert source_of(None) is None
