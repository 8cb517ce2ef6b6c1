"""The unsubscribe endpoint's work: GET changes nothing, POST suppresses once and
sends one event, forged tokens are refused with a reason and change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.events import Record, validate_record
from quiver.returnpath import KeyRing, KeyRingError, rotated
from quiver.storage.base import ALL_TENANTS, StorageError, Suppression
from quiver.storage.memory import MemoryEventSink, MemorySuppression
from quiver.unsubscribe import Subject, Unsubscriber, one_click
from quiver.unsubscribe.headers import UnsubscribeHeaders

T0 = 1_790_000_000.0
RING = rotated(None, now=T0 - 60)
SUBJECT = Subject(tenant="acme", campaign="dec", message_id="m-1", recipient="Ann@Example.org")
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


class FailingSink(MemoryEventSink):
    async def publish(self, records: Sequence[Record]) -> None:
        raise StorageError("SQS is down")


class Rig:
    def __init__(self, sink: MemoryEventSink | None = None) -> None:
        self.suppression = MemorySuppression(clock=lambda: T0)
        self.sink = sink or MemoryEventSink()
        self.unsubscriber = Unsubscriber(keys=RING, suppression=self.suppression,
                                         events=self.sink, clock=lambda: T0)
        self.token = UnsubscribeHeaders(RING, clock=lambda: T0).token(SUBJECT)

    def call(self, method: str, token: str | None = None, body: bytes = b"",
             content_type: str | None = FORM):
        return asyncio.run(self.unsubscriber.handle(
            method=method, token=self.token if token is None else token, body=body,
            content_type=content_type))


def test_get_shows_a_form_that_posts_and_changes_nothing() -> None:
    rig = Rig()
    for _ in range(3):  # a link scanner may fetch it many times
        response = rig.call("GET")
        assert response.status == 200 and response.outcome == "confirm"
    assert '<form method="post" action="">' in response.body
    assert 'name="List-Unsubscribe" value="One-Click"' in response.body
    assert "Ann@Example.org" in response.body
    assert response.headers["Cache-Control"] == "no-store"
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    assert rig.suppression.entries == {} and rig.sink.records == []


def test_post_suppresses_for_the_tenant_and_sends_one_event_then_nothing_twice() -> None:
    rig = Rig()
    first = rig.call("POST", body=ONE_CLICK)
    assert first.status == 200 and first.outcome == "unsubscribed"
    assert rig.suppression.entries == {("acme", "ann@example.org"): Suppression(
        address="ann@example.org", reason="unsubscribe", created_at=T0, tenant="acme",
        source="one-click (RFC 8058), message m-1")}
    (event,) = rig.sink.records
    validate_record(event)
    assert (event["event"], event["id"], event["rcpt"], event["tenant"], event["campaign"]) == (
        "unsubscribed", "m-1", "Ann@Example.org", "acme", "dec")
    for _ in range(2):
        again = rig.call("POST", body=ONE_CLICK)
        assert again.status == 200 and again.outcome == "already"
    assert len(rig.sink.records) == 1 and len(rig.suppression.entries) == 1


def test_a_message_without_a_tenant_suppresses_for_every_tenant() -> None:
    rig = Rig()
    token = UnsubscribeHeaders(RING, clock=lambda: T0).token(
        Subject(tenant=None, campaign=None, message_id="m-2", recipient="b@example.org"))
    assert rig.call("POST", token=token, body=ONE_CLICK).outcome == "unsubscribed"
    assert list(rig.suppression.entries) == [(ALL_TENANTS, "b@example.org")]


def test_an_earlier_suppression_for_another_reason_becomes_an_unsubscribe() -> None:
    rig = Rig()
    asyncio.run(rig.suppression.put(Suppression(
        address="ann@example.org", reason="manual", source="imported", created_at=1.0,
        tenant="acme")))
    assert rig.call("POST", body=ONE_CLICK).outcome == "unsubscribed"
    assert rig.suppression.entries[("acme", "ann@example.org")].reason == "unsubscribe"
    assert len(rig.sink.records) == 1


@pytest.mark.parametrize(("token", "reason", "status"), [
    ("not-a-token", "malformed", 400),
    ("", "malformed", 400),
])
def test_malformed_tokens_are_refused(token: str, reason: str, status: int) -> None:
    rig = Rig()
    for method in ("GET", "POST"):
        response = rig.call(method, token=token, body=ONE_CLICK)
        assert (response.status, response.outcome) == (status, "refused")
        assert response.refusal is not None and response.refusal.reason == reason
        assert "Ann" not in response.body
    assert rig.suppression.entries == {} and rig.sink.records == []


def test_a_forged_token_is_refused_with_its_reason_and_suppresses_nobody() -> None:
    rig = Rig()
    forger = rotated(None, now=T0 - 60)  # same key id 1, another secret
    forged = UnsubscribeHeaders(forger, clock=lambda: T0).token(SUBJECT)
    response = rig.call("POST", token=forged, body=ONE_CLICK)
    assert (response.status, response.outcome) == (403, "refused")
    assert response.refusal is not None and response.refusal.reason == "bad_hmac"
    assert rig.suppression.entries == {} and rig.sink.records == []


@pytest.mark.parametrize(("body", "content_type"), [
    (b"", FORM),
    (b"List-Unsubscribe=Yes", FORM),
    (b"unsubscribe=One-Click", FORM),
    (ONE_CLICK + b"&" + b"x" * 5000, FORM),
    (b"\xff\xfe", FORM),
])
def test_a_post_without_the_one_click_body_changes_nothing(body: bytes,
                                                           content_type: str) -> None:
    rig = Rig()
    response = rig.call("POST", body=body, content_type=content_type)
    assert (response.status, response.outcome) == (400, "bad_request")
    assert rig.suppression.entries == {} and rig.sink.records == []


def test_other_methods_are_refused() -> None:
    response = Rig().call("DELETE")
    assert response.status == 405 and response.headers["Allow"] == "GET, POST"


def test_an_event_that_cannot_be_sent_takes_the_suppression_back_and_asks_for_a_retry() -> None:
    rig = Rig(FailingSink())
    response = rig.call("POST", body=ONE_CLICK)
    assert (response.status, response.outcome) == (503, "unavailable")
    assert response.headers["Retry-After"] == "60"
    assert rig.suppression.entries == {}
    # The retry, with the queue back, does the whole thing once.
    rig.unsubscriber._events = rig.sink = MemoryEventSink()
    assert rig.call("POST", body=ONE_CLICK).outcome == "unsubscribed"
    assert len(rig.sink.records) == 1


@pytest.mark.parametrize("content_type", [FORM, None, "text/plain", FORM + "; charset=utf-8"])
def test_form_encoded_one_click(content_type: str | None) -> None:
    assert one_click(ONE_CLICK, content_type)
    assert one_click(b"a=b&List-Unsubscribe=One-Click", content_type)


def test_multipart_one_click() -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
            b"One-Click\r\n--XyZ--\r\n")
    assert one_click(body, "multipart/form-data; boundary=XyZ")
    assert not one_click(body.replace(b"One-Click", b"No"), "multipart/form-data; boundary=XyZ")


@given(st.binary(max_size=5000), st.sampled_from(
    [FORM, "multipart/form-data; boundary=XyZ", "multipart/form-data", None, "\x00;;"]))
def test_hostile_bodies_never_raise(body: bytes, content_type: str | None) -> None:
    assert one_click(body, content_type) in (True, False)


def test_the_page_escapes_what_it_shows() -> None:
    rig = Rig()
    token = UnsubscribeHeaders(RING, clock=lambda: T0).token(
        Subject(tenant=None, campaign=None, message_id="m", recipient="<script>@x.example"))
    body = rig.call("GET", token=token).body
    assert "<script>" not in body and "&lt;script&gt;" in body


def test_a_key_ring_that_cannot_be_read_answers_503_and_changes_nothing() -> None:
    def unreadable() -> KeyRing:
        raise KeyRingError("secret quiver/return-path/keys: AccessDenied")

    suppression, sink = MemorySuppression(), MemoryEventSink()
    unsubscriber = Unsubscriber(keys=unreadable, suppression=suppression, events=sink)
    response = asyncio.run(unsubscriber.handle(
        method="POST", token=Rig().token, body=ONE_CLICK, content_type=FORM))
    assert (response.status, response.outcome) == (503, "unavailable")
    assert suppression.entries == {} and sink.records == []
