"""Per-recipient attempts, the retry schedule, last replies, `failed` finals at the receive
limit and findable rejections: the lifecycle against scripted transports and a fake clock.

`Attempt.counts` is the scheduler's word on whether a recipient was really tried
(interfaces I1); here the scripts set it, so each rule is checked on its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiver.bounce import default_classifier
from quiver.delivery import Attempt, Path
from quiver.dkim import SignerSet
from quiver.envelope import decode
from quiver.event_schema import record_problems, stored
from quiver.events import FINAL_EVENTS
from quiver.policy import parse_policy
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MAX_SQS_BODY, MessageHandler
from quiver.smtp.reply import Reply, local_reply, parse_reply
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryFinals, MemoryQueue

T0 = 1_790_000_000.0
POLICY_TEXT = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[retry]
first = "1s"
factor = 2
cap = "1h"
jitter = 0
max_age = "40s"
site_backoff = "2s"
"""
PATH = Path(source="s1", source_ip="192.0.2.1", mx="mx.example.org", mx_ip="192.0.2.9",
            site="mx.example.org")
MESSAGE = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
BUSY = parse_reply(421, "4.7.0 mx busy for this recipient")
GREY = parse_reply(451, "4.3.0 try later")
OK = parse_reply(250, "2.0.0 ok")
BACKOFF = local_reply(451, "4.4.5", "s1 → mx.example.org backing off after: 421 4.7.0 busy")

# (reply, counts) for a recipient on the transport's n-th call (0-based).
Script = Callable[[str, int], tuple[Reply, bool]]


class ScriptedTransport:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[str, list[str]]] = []

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Any = None) -> list[Attempt]:
        n = len(self.calls)
        self.calls.append((sender, list(recipients)))
        out = []
        for r in recipients:
            reply, counts = self.script(r, n)
            out.append(Attempt(rcpt=r, reply=reply, path=PATH, counts=counts))
        return out


@dataclass
class Round:
    records: list[dict]
    retries: list[Outgoing]
    dead: list[str]
    dead_attributes: list[dict[str, str]]
    done: bool


@dataclass
class Lifecycle:
    """One MessageHandler and a fake clock; each `run` is one receipt of one body."""

    script: Script
    policy_text: str = POLICY_TEXT
    max_receives: int = 0
    finalized: set[str] | None = None  # recipients of the message already final
    now: float = T0
    bodies: MemoryBodyStore = field(default_factory=lambda: MemoryBodyStore("spill"))
    records: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.transport = ScriptedTransport(self.script)

    async def run(self, body: str, *, receive_count: int = 1) -> Round:
        queue, dlq, sink = MemoryQueue("outbound"), MemoryQueue("dlq"), MemoryEventSink()
        # Re-enqueues are recorded as sent, so the round can read their delays.
        retries: list[Outgoing] = []
        sent = _Recording(queue, retries)
        completer = Completer(queue=sent, dlq=dlq, sink=sink, max_delay=0.001)
        finals = None
        if self.finalized is not None:
            finals = MemoryFinals()
            message_id = decode(body).id
            finals.claims.update({(message_id, rcpt): "earlier" for rcpt in self.finalized})
        handler = MessageHandler(
            policy=parse_policy(self.policy_text), transport=self.transport,
            signers=SignerSet([]), bodies=self.bodies, completer=completer,
            classifier=default_classifier(), clock=lambda: self.now, rng=random.Random(7),
            finalized=finals.finalized if finals is not None else None,
            max_receives=self.max_receives,
        )
        await sent.send([Outgoing(body=body)])
        retries.clear()
        for _ in range(receive_count - 1):  # earlier receives that never completed
            await queue.receive(max_messages=1, wait_seconds=0, visibility=0)
        (received,) = await queue.receive(max_messages=1, wait_seconds=0, visibility=30)
        completer.start()
        try:
            done = await handler.handle(received)
        finally:
            await completer.close()
        self.records.extend(sink.records)
        return Round(sink.records, list(retries), dlq.bodies(), dlq.attributes(), done)

    async def until_final(self, body: str, *, limit: int = 100) -> int:
        """Feed every re-enqueue back at its not-before time until none is left; the
        number of receipts it took."""
        pending = [body]
        receipts = 0
        while pending and receipts < limit:
            pending.sort(key=lambda b: decode(b).not_before or 0)
            body = pending.pop(0)
            when = decode(body).not_before
            if when is not None:
                self.now = max(self.now, when)
            receipts += 1
            result = await self.run(body)
            pending.extend(r.body for r in result.retries)
        assert not pending, "still pending after the receipt limit"
        return receipts


class _Recording:
    """The outbound queue as the completer sees it: retries are recorded as sent."""

    def __init__(self, queue: MemoryQueue, retries: list[Outgoing]) -> None:
        self._queue = queue
        self._retries = retries

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self._retries.extend(messages)
        await self._queue.send([Outgoing(body=m.body) for m in messages])

    async def delete(self, receipts: Sequence[str]) -> None:
        await self._queue.delete(receipts)

    async def receive(self, **kwargs):  # pragma: no cover - the completer never receives
        raise AssertionError("not used")

    async def change_visibility(self, receipts, *, seconds):  # pragma: no cover
        raise AssertionError("not used")


def body(to: list[str], **extra) -> str:
    """A queue body; first queued at T0 (the memory queue's own send time is wall time)."""
    return json.dumps({"v": 1, "id": "m-1", "from": "bounce@example.com", "to": to,
                       "raw": base64.b64encode(MESSAGE).decode(), "_queued_at": T0, **extra})


def events_of(records: list[dict], rcpt: str) -> list[dict]:
    return [r for r in records if r["rcpt"] == rcpt]


async def test_a_421_forever_recipient_is_tried_on_the_schedule_and_expires_with_its_421() -> None:
    """first 1 s, factor 2, max_age 40 s: tries at 0, 1, 3, 7, 15 and 31 s, no more."""
    life = Lifecycle(lambda rcpt, n: (BUSY, True))
    await life.until_final(body(["busy@a.example"]))
    tries = len(life.transport.calls)
    assert tries == 6
    deferred = [e for e in life.records if e["event"] == "deferred"]
    (expired,) = [e for e in life.records if e["event"] == "expired"]
    assert [e["attempt"] for e in deferred] == [1, 2, 3, 4, 5]
    assert expired["attempt"] == 6
    assert expired["response"] == BUSY.as_event()
    starts = sorted({e["at"] for e in life.records})
    assert starts == ["2026-09-21T14:13:20.000Z", "2026-09-21T14:13:21.000Z",
                      "2026-09-21T14:13:23.000Z", "2026-09-21T14:13:27.000Z",
                      "2026-09-21T14:13:35.000Z", "2026-09-21T14:13:51.000Z"]


async def test_an_untried_recipient_keeps_its_count_gets_no_event_and_waits_its_delay() -> None:
    life = Lifecycle(lambda rcpt, n: (BACKOFF, False))
    result = await life.run(body(["r@a.example"], _attempt=3))
    assert result.records == []
    (retry,) = result.retries
    env = decode(retry.body)
    assert env.attempt == 3
    # The schedule's delay for 3 tries (1 s, doubled twice), not the site backoff's 2 s.
    assert env.not_before == T0 + 4 and retry.delay_seconds == 4
    assert env.last["r@a.example"].tried is False


async def test_a_recipient_never_tried_is_still_spaced_and_expires_saying_why() -> None:
    life = Lifecycle(lambda rcpt, n: (BACKOFF, False))
    receipts = await life.until_final(body(["r@a.example"]))
    # 1 s apart (its count stays 0) from 0 s to 40 s, where it expires on receipt.
    assert receipts == 41
    (expired,) = life.records
    assert expired["event"] == "expired" and expired["attempt"] == 0
    assert expired["response"]["code"] == 451 and expired["response"]["enhanced"] == "4.4.7"
    assert expired["response"]["text"].startswith("never attempted: 451 4.4.5 s1 → ")


async def test_recipients_with_different_fates_are_re_enqueued_by_attempt_count() -> None:
    replies = {"tried": (GREY, True), "drained": (BUSY, False), "ok": (OK, True)}
    life = Lifecycle(lambda rcpt, n: replies[rcpt.split("@")[0]])
    result = await life.run(body(["tried@a.example", "drained@b.example", "ok@c.example"],
                                 _attempt=2))
    assert {(e["rcpt"], e["event"], e["attempt"]) for e in result.records} == {
        ("tried@a.example", "deferred", 3), ("ok@c.example", "delivered", 3)}
    by_count = {decode(r.body).attempt: (decode(r.body), r.delay_seconds)
                for r in result.retries}
    assert set(by_count) == {2, 3}
    (tried, tried_delay), (drained, drained_delay) = by_count[3], by_count[2]
    assert tried.recipients == ("tried@a.example",) and tried_delay == 4
    assert drained.recipients == ("drained@b.example",) and drained_delay == 2
    assert tried.last["tried@a.example"].tried and tried.last["tried@a.example"].code == 451
    assert not drained.last["drained@b.example"].tried
    assert tried.raw == MESSAGE == drained.raw  # each carries the body


async def test_expired_carries_the_recipients_own_reply_never_a_siblings() -> None:
    """Tried once (451), then only ever drained by a sibling's 421: its expired event
    says 451, its own; the sibling's expired says its own 421."""
    def script(rcpt: str, n: int) -> tuple[Reply, bool]:
        if rcpt.startswith("sib"):
            return BUSY, True
        return (GREY, True) if n == 0 else (BUSY, False)

    life = Lifecycle(script)
    await life.until_final(body(["me@a.example", "sib@a.example"]))
    mine = events_of(life.records, "me@a.example")
    assert [e["event"] for e in mine] == ["deferred", "expired"]
    assert all(e["response"] == GREY.as_event() for e in mine)
    assert all(e["attempt"] == 1 for e in mine)
    sibling = events_of(life.records, "sib@a.example")
    assert sibling[-1]["event"] == "expired" and sibling[-1]["response"] == BUSY.as_event()
    assert [e["attempt"] for e in sibling] == list(range(1, len(sibling) + 1))


async def test_expired_on_receipt_uses_each_recipients_last_reply() -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True))
    life.now = T0 + 100
    first = await life.run(body(["a@x.example", "b@x.example"], _attempt=2,
                                _last=[{"code": 421, "enhanced": "4.7.0", "text": "mine",
                                        "tried": True, "to": [0]},
                                       {"code": 451, "enhanced": "4.4.5", "text": "backoff",
                                        "tried": False, "to": [1]}]))
    assert life.transport.calls == []
    by_rcpt = {e["rcpt"]: e for e in first.records}
    assert by_rcpt["a@x.example"]["response"] == {"code": 421, "enhanced": "4.7.0",
                                                  "text": "mine"}
    assert by_rcpt["b@x.example"]["response"]["text"] == "never attempted: 451 4.4.5 backoff"
    assert {e["event"] for e in first.records} == {"expired"}
    assert {e["attempt"] for e in first.records} == {2}
    assert {e["reason"] for e in first.records} == {"max_age passed"}


async def test_at_most_one_event_per_recipient_per_attempt() -> None:
    class Twice(ScriptedTransport):
        async def deliver(self, **kwargs) -> list[Attempt]:
            attempts = await super().deliver(**kwargs)
            return attempts + attempts  # a transport that reports a recipient twice

    life = Lifecycle(lambda rcpt, n: (GREY, True))
    life.transport = Twice(life.script)
    result = await life.run(body(["a@x.example"]))
    assert [e["event"] for e in result.records] == ["deferred"]
    (retry,) = result.retries
    assert decode(retry.body).recipients == ("a@x.example",)


@pytest.mark.parametrize("receive_count", [4, 5])
async def test_at_the_receive_limit_each_pending_recipient_fails_and_the_body_goes_to_the_dlq(
        receive_count: int) -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True), max_receives=5, finalized={"done@x.example"})
    original = body(["done@x.example", "a@x.example", "b@y.example"], _attempt=2, tenant="t1",
                    _last=[{"code": 421, "enhanced": "4.7.0", "text": "busy", "tried": True,
                            "to": [1]}])
    result = await life.run(original, receive_count=receive_count)
    assert result.done and life.transport.calls == []
    assert {(e["rcpt"], e["event"]) for e in result.records} == {
        ("a@x.example", "failed"), ("b@y.example", "failed")}
    assert all(e["event"] in FINAL_EVENTS for e in result.records)
    by_rcpt = {e["rcpt"]: e for e in result.records}
    assert by_rcpt["a@x.example"]["response"]["code"] == 421
    assert by_rcpt["b@y.example"]["response"] is None
    for e in result.records:
        assert e["attempt"] == 2 and e["tenant"] == "t1"
        assert f"received {receive_count} times" in e["reason"]
        assert e["sqs_message_id"] == "outbound-1"
    (dead,) = result.dead
    kept = decode(dead)
    assert kept.recipients == ("a@x.example", "b@y.example") and kept.raw == MESSAGE
    assert kept.attempt == 2 and kept.queued_at == T0 and kept.tenant == "t1"
    assert result.dead_attributes[0]["quiver-message-id"] == "outbound-1"
    assert result.retries == []


async def test_below_the_receive_limit_a_redelivered_message_is_delivered() -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True), max_receives=5)
    result = await life.run(body(["a@x.example"]), receive_count=3)
    assert [e["event"] for e in result.records] == ["delivered"] and result.dead == []


async def test_a_re_enqueue_too_big_for_sqs_moves_its_body_to_s3() -> None:
    big = MESSAGE + b"x" * (MAX_SQS_BODY * 3 // 4 - 2000)  # fits as base64, with room to spare
    text = json.dumps({"v": 1, "id": "big", "from": "b@example.com",
                       "to": [f"r{i}@x.example" for i in range(100)],
                       "raw": base64.b64encode(big).decode()})
    assert len(text) < MAX_SQS_BODY
    # 100 different replies, each near the text bound: more than the room left.
    life = Lifecycle(lambda rcpt, n: (parse_reply(451, f"4.3.0 {rcpt} " + "y" * 490), True))
    result = await life.run(text)
    (retry,) = result.retries
    assert len(retry.body.encode()) <= MAX_SQS_BODY
    env = decode(retry.body)
    assert env.raw is None and env.raw_s3 is not None
    assert await life.bodies.get(env.raw_s3, max_size=len(big)) == big
    assert env.last["r7@x.example"].text.startswith("r7@x.example ")


async def test_null_sender_reaches_the_transport_and_the_events() -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True))
    result = await life.run(body(["a@x.example"]).replace('"bounce@example.com"', '""'))
    assert life.transport.calls == [("", ["a@x.example"])]
    assert result.records[0]["from"] == "" and result.records[0]["event"] == "delivered"


@pytest.mark.parametrize(("extra", "to", "reason"), [
    ({"meta": {"k": [1]}}, ["a@x.example", "B@Y.example"], "meta.k: values must be"),
    ({"pool": "nope"}, ["a@x.example", "B@Y.example"], "pool: unknown pool"),
    ({"pool": "bad pool!"}, ["a@x.example", "B@Y.example"], "pool: expected"),
    ({}, ["a@x.example", "bad\r\nRCPT TO:<e@evil.example>"], "to[1]: invalid address"),
])
async def test_a_rejected_message_is_found_by_the_callers_id_and_recipients(
        extra: dict, to: list[str], reason: str) -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True))
    raw = body(to, tenant="acme", campaign="spring", **extra)
    result = await life.run(raw)
    assert life.transport.calls == []
    assert [e["event"] for e in result.records] == ["rejected", "rejected"]
    assert [e["rcpt"] for e in result.records] == [
        "a@x.example", "B@y.example" if "@Y" in to[1] else to[1]]
    for e in result.records:
        assert e["id"] == "m-1" and e["tenant"] == "acme" and e["campaign"] == "spring"
        assert e["sqs_message_id"] == "outbound-1" and reason in e["reason"]
        assert e["from"] == "bounce@example.com"
    assert result.dead == [raw]


@pytest.mark.parametrize("raw", ["{not json", '{"v": 1, "id": "bad id!", "to": 7}', "[1, 2]"])
async def test_an_unreadable_rejection_keeps_the_sqs_message_id(raw: str) -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True))
    result = await life.run(raw)
    (event,) = result.records
    assert event["event"] == "rejected" and event["rcpt"] is None
    assert event["id"] == event["sqs_message_id"] == "outbound-1"
    assert result.dead == [raw]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=8,
)
# The other fields of a body, each possibly broken (or unknown: `colour`).
others = st.dictionaries(
    st.sampled_from(["v", "from", "raw", "pool", "meta", "expires", "_attempt", "colour"]),
    json_values, max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(r"[A-Za-z0-9._:@-]{1,40}", fullmatch=True),
       st.lists(st.from_regex(r"[a-z0-9]{1,8}@[a-z]{1,8}\.example", fullmatch=True),
                min_size=1, max_size=4, unique=True),
       st.from_regex(r"[a-z]{1,10}", fullmatch=True), others)
def test_a_body_with_a_readable_id_and_to_is_found_by_them_whatever_else_is_wrong(
        message_id: str, to: list[str], tenant: str, other: dict[str, Any]) -> None:
    life = Lifecycle(lambda rcpt, n: (OK, True))
    raw = json.dumps({"v": 1, "id": message_id, "from": "bounce@example.com", "to": to,
                      "raw": base64.b64encode(MESSAGE).decode(), "_queued_at": T0,
                      "tenant": tenant, "campaign": "c1", **other})
    result = asyncio.run(life.run(raw))
    # Every recipient gets its event under the caller's id, rejected or not.
    assert sorted(e["rcpt"] for e in result.records) == sorted(to)
    for e in result.records:
        assert e["id"] == message_id and e["tenant"] == tenant and e["campaign"] == "c1"
        if e["event"] == "rejected":
            assert e["sqs_message_id"] == "outbound-1" and e["reason"]
            assert record_problems(stored(e)) == []
