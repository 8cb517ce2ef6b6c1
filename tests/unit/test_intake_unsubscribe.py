"""The mailto unsubscribe intake on in-memory stores: a request does what a one-click
POST does, once, however often its object is processed; what is no request, or
carries a token that does not verify, is counted and changes nothing; the bounce
prefix's mail goes to the intake its envelope recipient names."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inbound_mail import (
    DAY,
    MAILTO,
    T0,
    Clock,
    Verp,
    dsn,
    ring,
    ses_stored,
    unsubscribe_request,
)

from quiver.events import rfc3339_ms, validate_record
from quiver.feedback.limits import MAX_HEADER_FIELDS
from quiver.intake.bounce import BounceIntake
from quiver.intake.by_recipient import ByRecipient
from quiver.intake.counts import IntakeCounts, Outcome
from quiver.intake.mail import InboundMail
from quiver.intake.unsubscribe import MailtoIntake
from quiver.returnpath import RETIRED_GRACE, KeyRing, ReturnPathKey
from quiver.storage.base import ALL_TENANTS, StorageError, Suppression
from quiver.storage.memory import MemoryEventSink, MemorySuppression
from quiver.unsubscribe import Subject, Unsubscriber
from quiver.unsubscribe.headers import UnsubscribeHeaders

RCPT = "Ann.Lee@example.org"
STORED_AT = T0 + 3600.5
WHO = Subject(tenant="acme", campaign="december", message_id="m-1", recipient=RCPT)


def stored(raw: bytes, key: str = "bounce/req-1") -> InboundMail:
    return InboundMail(bucket="inbound", key=key, raw=raw, stored_at=STORED_AT)


def token(subject: Subject = WHO, keys: KeyRing | None = None) -> str:
    return UnsubscribeHeaders(keys or ring(), clock=lambda: T0).token(subject)


class Rig:
    def __init__(self, clock: Clock, keys: KeyRing | None = None) -> None:
        self.sink = MemoryEventSink()
        self.suppression = MemorySuppression(clock=clock)
        self.mailto = MailtoIntake(addresses=[MAILTO.upper()], keys=keys or ring(),
                                   suppression=self.suppression, sink=self.sink, clock=clock)
        self.verp = Verp(clock=clock)
        self.intake = ByRecipient(
            bounce=BounceIntake(verifier=self.verp.verifier, suppression=self.suppression,
                                sink=self.sink),
            mailto=self.mailto)

    def process(self, raw: bytes, key: str = "bounce/req-1") -> Outcome:
        return asyncio.run(self.intake.process(stored(raw, key)))

    def request(self, subject: str | None = None, key: str = "bounce/req-1",
                **kwargs: str) -> Outcome:
        return self.process(unsubscribe_request(
            subject=f"unsubscribe-{token()}" if subject is None else subject, **kwargs), key)

    def nothing_written(self) -> bool:
        return self.sink.published == [] and self.suppression.entries == {}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rig(clock: Clock) -> Rig:
    return Rig(clock)


def test_a_request_suppresses_the_token_s_recipient_and_sends_one_event(rig: Rig) -> None:
    outcome = rig.request()
    assert outcome == Outcome("unsubscribe", "accepted", "unsubscribed", "m-1", events=1,
                              suppressed=1)
    assert rig.suppression.entries == {("acme", RCPT.lower()): Suppression(
        address=RCPT.lower(), reason="unsubscribe", created_at=STORED_AT, tenant="acme",
        source="mailto (RFC 2369), message m-1, s3://inbound/bounce/req-1")}
    ((batch_id, (event,)),) = rig.sink.published
    validate_record(event)
    assert batch_id == stored(unsubscribe_request(subject=f"unsubscribe-{token()}")).identity
    assert event == {
        "v": 1, "event": "unsubscribed", "at": rfc3339_ms(STORED_AT), "id": "m-1",
        "rcpt": RCPT, "from": None, "tenant": "acme", "campaign": "december", "pool": None,
        "meta": {}, "attempt": 0, "reason": "mailto (RFC 2369)",
        "inbound_object": "s3://inbound/bounce/req-1"}


def test_a_message_without_a_tenant_suppresses_for_every_tenant(rig: Rig) -> None:
    anyone = Subject(tenant=None, campaign=None, message_id="m-2", recipient=RCPT)
    assert rig.request(f"Re: unsubscribe-{token(anyone)}").reason == "unsubscribed"
    assert list(rig.suppression.entries) == [(ALL_TENANTS, RCPT.lower())]


def test_the_same_object_twice_suppresses_once_and_exports_one_event(rig: Rig) -> None:
    first, again = rig.request(), rig.request()
    assert first == again and again.reason == "unsubscribed"
    assert len(rig.suppression.entries) == 1
    # Published twice under one batch id: the export writes the same objects again.
    assert len({batch_id for batch_id, _ in rig.sink.published}) == 1
    assert [e["event"] for e in rig.sink.exported()] == ["unsubscribed"]


def test_another_request_for_an_unsubscribed_recipient_changes_nothing(rig: Rig) -> None:
    rig.request(key="bounce/req-1")
    entry = rig.suppression.entries[("acme", RCPT.lower())]
    outcome = rig.request(key="bounce/req-2")
    assert (outcome.outcome, outcome.reason, outcome.events) == (
        "accepted", "already_unsubscribed", 0)
    assert rig.suppression.entries[("acme", RCPT.lower())] == entry
    assert len(rig.sink.published) == 1


def test_a_one_click_post_and_a_mailed_request_unsubscribe_once_between_them(
        clock: Clock) -> None:
    for order in (("post", "mail"), ("mail", "post")):
        rig = Rig(clock)
        endpoint = Unsubscriber(keys=ring(), suppression=rig.suppression, events=rig.sink,
                                clock=clock)
        changed = []
        for way in order:
            if way == "post":
                response = asyncio.run(endpoint.handle(
                    method="POST", token=token(), body=b"List-Unsubscribe=One-Click",
                    content_type="application/x-www-form-urlencoded"))
                changed.append(response.outcome == "unsubscribed")
            else:
                changed.append(rig.request().reason == "unsubscribed")
        assert changed == [True, False]
        assert len(rig.sink.records) == 1 and len(rig.suppression.entries) == 1


def test_an_event_that_cannot_be_sent_fails_the_object_and_a_retry_finishes(rig: Rig) -> None:
    rig.sink.fail_next = 1
    with pytest.raises(StorageError):
        rig.request()
    # The entry stays (the intake may not delete); processing the object again
    # rewrites its own entry and sends the event.
    assert len(rig.suppression.entries) == 1 and rig.sink.published == []
    assert rig.request().reason == "unsubscribed"
    assert [e["event"] for e in rig.sink.exported()] == ["unsubscribed"]


def test_a_suppression_store_failure_raises_and_writes_nothing(rig: Rig) -> None:
    rig.suppression.fail = StorageError("throttled (test)")
    with pytest.raises(StorageError):
        rig.request()
    assert rig.sink.published == []


def test_a_forged_token_is_refused_bad_hmac_and_changes_nothing(rig: Rig) -> None:
    good = token()
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "BA")
    outcome = rig.request(f"unsubscribe-{forged}")
    assert (outcome.outcome, outcome.reason) == ("refused", "bad_hmac")
    assert rig.nothing_written()


def test_a_token_from_another_ring_is_refused_unknown_key(rig: Rig) -> None:
    other = KeyRing([ReturnPathKey(id=7, secret=b"o" * 32, created=T0 - DAY)])
    outcome = rig.request(f"unsubscribe-{token(keys=other)}")
    assert (outcome.outcome, outcome.reason) == ("refused", "unknown_key")
    assert rig.nothing_written()


def test_a_token_of_a_key_retired_past_the_grace_is_refused_expired_key(clock: Clock) -> None:
    rig = Rig(clock, keys=ring(retired=T0 - RETIRED_GRACE - DAY))
    outcome = rig.request()
    assert (outcome.outcome, outcome.reason) == ("refused", "expired_key")
    assert rig.nothing_written()


def test_a_subject_that_is_no_token_is_refused_malformed(rig: Rig) -> None:
    outcome = rig.request("unsubscribe-hello")
    assert (outcome.outcome, outcome.reason) == ("refused", "malformed")
    assert rig.nothing_written()


@pytest.mark.parametrize("subject", ["", "Please take me off your list", "unsubscribe"])
def test_mail_without_a_request_subject_is_ignored_no_token(rig: Rig, subject: str) -> None:
    outcome = rig.request(subject)
    assert (outcome.outcome, outcome.reason) == ("ignored", "no_token")
    assert rig.nothing_written()


def test_mail_without_a_subject_field_is_ignored_no_token(rig: Rig) -> None:
    raw = unsubscribe_request(subject="x").replace(b"Subject: x\r\n", b"")
    assert rig.process(raw).reason == "no_token"
    assert rig.nothing_written()


@pytest.mark.parametrize(("extra", "reason"), [
    ("Auto-Submitted: auto-replied\n", "auto_reply"),
    ("Auto-Submitted: auto-notified; owner-email=x@example.org\n", "auto_reply"),
    ("X-Autoreply: yes\n", "auto_reply"),
    ("X-Autorespond: vacation\n", "auto_reply"),
    ("Precedence: auto_reply\n", "auto_reply"),
])
def test_auto_replies_carrying_a_token_are_ignored(rig: Rig, extra: str, reason: str) -> None:
    outcome = rig.request(f"Re: unsubscribe-{token()}", extra=extra)
    assert (outcome.outcome, outcome.reason) == ("ignored", reason), outcome
    assert rig.nothing_written()


@pytest.mark.parametrize("report_type", ["delivery-status", "disposition-notification",
                                         "feedback-report"])
def test_reports_carrying_a_token_are_ignored_as_bounces(rig: Rig, report_type: str) -> None:
    raw = unsubscribe_request(subject=f"Re: unsubscribe-{token()}").replace(
        b"Content-Type: text/plain; charset=utf-8",
        f'Content-Type: multipart/report; report-type={report_type}; boundary="b"'.encode())
    outcome = rig.process(raw)
    assert (outcome.outcome, outcome.reason) == ("ignored", "bounce")
    assert report_type in outcome.detail
    assert rig.nothing_written()


def test_mail_from_the_null_sender_is_a_report_not_a_request(rig: Rig) -> None:
    outcome = rig.request(sender="")
    assert (outcome.outcome, outcome.reason) == ("ignored", "bounce")
    assert rig.nothing_written()


@pytest.mark.parametrize("submitted", ["no", "auto-generated", "Auto-Generated; by=client"])
def test_a_request_its_client_marked_auto_generated_still_counts(
        rig: Rig, submitted: str) -> None:
    assert rig.request(extra=f"Auto-Submitted: {submitted}\n").reason == "unsubscribed"


def test_a_flood_of_header_fields_is_ignored_too_complex_unread(rig: Rig) -> None:
    flood = "".join(f"X-F{i}: v\n" for i in range(MAX_HEADER_FIELDS + 1))
    outcome = rig.request(extra=flood)
    assert (outcome.outcome, outcome.reason) == ("ignored", "too_complex")
    assert rig.nothing_written()


def test_the_bounce_prefix_routes_by_envelope_recipient(rig: Rig) -> None:
    """A DSN to a signed return path on the same domain is a bounce; the mailto's
    mail, whatever case SES recorded it in, is a request."""
    address = rig.verp.address(message_id="m-9", recipient="bob@example.org")
    assert rig.process(dsn(return_path=address, recipient="bob@example.org"),
                       key="bounce/dsn-1").kind == "bounce"
    request = unsubscribe_request(subject=f"unsubscribe-{token()}", mailto=MAILTO.upper())
    assert rig.process(request).kind == "unsubscribe"
    # An unknown recipient on the domain is the bounce intake's to judge.
    other = unsubscribe_request(subject=f"unsubscribe-{token()}",
                                mailto="someone@bounces.example.com")
    outcome = rig.process(other, key="bounce/req-3")
    assert (outcome.kind, outcome.outcome) == ("bounce", "ignored")
    assert [e["event"] for e in rig.sink.exported()] == ["async_bounce", "unsubscribed"]


def test_the_outcomes_are_counted_under_kind_unsubscribe(rig: Rig) -> None:
    counts = IntakeCounts()
    counts.count(rig.request())
    counts.count(rig.request("hello", key="bounce/req-2"))
    out = io.StringIO()
    assert counts.flush(out) == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted((d["kind"], d["reason"], next(
        m["Name"] for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"])) for d in docs) == [
        ("unsubscribe", "no_token", "inbound_ignored"),
        ("unsubscribe", "unsubscribed", "inbound_accepted")]


_FIELD_NAMES = st.sampled_from(["Subject", "Auto-Submitted", "Content-Type", "Return-Path",
                                "Precedence", "X-Autoreply", "From", "Received", "subject"])
_FIELD_VALUES = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["unsubscribe-", "=?utf-8?B?", "?=", "<>", "auto-replied",
                     "multipart/report", "Re: ", "\r\n ", "\x00", "no"]),
    st.builds(lambda p: p + "unsubscribe-" + token(), st.sampled_from(["", "Re: ", "x"])),
)


@settings(max_examples=150)
@given(fields=st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES), max_size=12),
       body=st.binary(max_size=200))
def test_hostile_requests_never_raise_and_write_only_what_a_valid_token_allows(
        fields: list[tuple[str, str]], body: bytes) -> None:
    rig = Rig(Clock())
    head = "".join(f"{name}: {value}\r\n" for name, value in fields).encode("utf-8", "replace")
    outcome = rig.process(ses_stored(head + b"\r\n" + body, recipient=MAILTO,
                                     sender="ann@example.org"))
    assert outcome.kind == "unsubscribe"
    if outcome.outcome == "accepted":
        # Only our token's recipient, never anyone the mail names.
        assert list(rig.suppression.entries) == [("acme", RCPT.lower())]
    else:
        assert rig.nothing_written()
