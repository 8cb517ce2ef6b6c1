"""The suppression list in a message's life: suppressed recipients get their one final
`suppressed` event and no attempt, the others go on; a list that cannot be read defers
or sends as `[suppression] on_error` says; synchronous hard bounces add entries once
their events are durable. In-memory stores, a scripted transport, a fake clock."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest

from quiver.bounce import default_classifier
from quiver.delivery import Attempt, Path
from quiver.dkim import SignerSet
from quiver.envelope import decode
from quiver.events import FINAL_EVENTS
from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.smtp.reply import parse_reply
from quiver.storage.base import ALL_TENANTS, Outgoing, StorageError, Suppression
from quiver.storage.memory import (
    MemoryBodyStore,
    MemoryEventSink,
    MemoryQueue,
    MemorySuppression,
)
from quiver.suppression import SuppressionCheck, SuppressionWriter

T0 = 1_790_000_000.0
POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[retry]
first = "5m"
max_age = "1h"
"""
PATH = Path(source="s1", source_ip="192.0.2.1", mx="mx.example.org", mx_ip="192.0.2.9",
            site="mx.example.org", provider=None, tls="TLSv1.3")
MESSAGE = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
REPLIES = {"ok": (250, "2.0.0 ok"), "temp": (451, "4.3.0 try later"),
           "perm": (550, "5.1.1 user unknown"), "full": (552, "5.2.2 mailbox full")}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Transport:
    """Answers by local part (ok, temp, perm, full; data: one 550 5.1.1 to the end of
    DATA for all such recipients of the transaction, as a session reports it);
    records every recipient tried."""

    def __init__(self) -> None:
        self.tried: list[str] = []

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Callable[[], Awaitable[bytes]] | None = None
                      ) -> list[Attempt]:
        self.tried.extend(recipients)
        at_data = parse_reply(550, "5.1.1 user unknown")
        return [Attempt(rcpt=r, path=PATH, reply=at_data if r.startswith("data") else
                        parse_reply(*REPLIES[r.split("@")[0].split("-")[0]]))
                for r in recipients]


class Rig:
    def __init__(self, extra: str = "") -> None:
        self.clock = Clock()
        self.sink = MemoryEventSink()
        self.bodies = MemoryBodyStore("spill")
        self.transport = Transport()
        self.store = MemorySuppression(clock=self.clock)
        self.policy = PolicyHandle(parse_policy(POLICY + "[suppression]\n" + extra))
        self.check = SuppressionCheck(self.store, policy=self.policy, clock=self.clock,
                                      monotonic=self.clock)
        self.writer = SuppressionWriter(self.store, check=self.check)
        self.queue, self.dlq = MemoryQueue("outbound"), MemoryQueue("dlq")

    async def run(self, body: str, *, max_receives: int = 0, receive_count: int = 1) -> bool:
        """Handle one message as a sender does, with a fresh outbound queue and DLQ (what
        it re-enqueues is in `self.queue` afterwards, what it dead-letters in `self.dlq`).
        `receive_count`: this receive's count (the earlier ones never completed)."""
        self.queue, self.dlq = MemoryQueue("outbound"), MemoryQueue("dlq")
        completer = Completer(queue=self.queue, dlq=self.dlq, sink=self.sink,
                              max_delay=0.01)
        handler = MessageHandler(
            policy=self.policy, transport=self.transport, signers=SignerSet([]),
            bodies=self.bodies, completer=completer, classifier=default_classifier(),
            rng=random.Random(1), clock=self.clock, suppression=self.check,
            suppression_writer=self.writer, max_receives=max_receives)
        await self.queue.send([Outgoing(body=body)])
        for _ in range(receive_count - 1):
            await self.queue.receive(max_messages=1, wait_seconds=0, visibility=0)
        (received,) = await self.queue.receive(max_messages=1, wait_seconds=0, visibility=30)
        assert received.receive_count == receive_count
        completer.start()
        try:
            return await handler.handle(received)
        finally:
            await completer.close()

    def finals(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in self.sink.records:
            if r["event"] in FINAL_EVENTS:
                assert r["rcpt"] not in out, f"two final events for {r['rcpt']}"
                out[r["rcpt"]] = r
        return out


def body(to: list[str], mid: str = "m-1", **extra: object) -> str:
    return json.dumps({"v": 1, "id": mid, "from": "bounce@example.com", "to": to,
                       "raw": base64.b64encode(MESSAGE).decode(), **extra})


def entry(address: str, tenant: str = ALL_TENANTS, **kw: object) -> Suppression:
    fields: dict[str, object] = {"reason": "complaint", "created_at": T0 - 3600,
                                 "source": "fbl report 17"}
    fields.update(kw)
    return Suppression(address=address, tenant=tenant, **fields)  # type: ignore[arg-type]


async def test_a_suppressed_recipient_is_never_tried_and_its_sibling_is_delivered() -> None:
    rig = Rig()
    await rig.store.put(entry("ok-no@a.example"))
    assert await rig.run(body(["ok-no@a.example", "ok-yes@a.example"], tenant="acme"))
    assert rig.transport.tried == ["ok-yes@a.example"]
    finals = rig.finals()
    assert finals["ok-yes@a.example"]["event"] == "delivered"
    suppressed = finals["ok-no@a.example"]
    assert suppressed["event"] == "suppressed" and suppressed["attempt"] == 0
    assert suppressed["tenant"] == "acme" and suppressed["response"] is None
    assert suppressed["bounce"] == {"kind": "suppressed", "category": "complaint",
                                    "reason": suppressed["reason"]}
    assert suppressed["reason"] == ("on the suppression list: complaint in scope global since "
                                    "2026-09-21T13:13:20.000Z; source: fbl report 17")
    assert len(rig.sink.records) == 2 and len(rig.queue) == 0


async def test_a_message_whose_every_recipient_is_suppressed_is_not_even_fetched() -> None:
    rig = Rig()
    await rig.store.put(entry("ok@a.example", tenant="acme", reason="unsubscribe"))
    gone = json.dumps({"v": 1, "id": "m-s3", "from": "b@example.com", "to": ["ok@a.example"],
                       "raw_s3": "s3://spill/missing.eml", "tenant": "acme"})
    assert await rig.run(gone)  # the body does not exist: never asked for
    (record,) = rig.sink.records
    assert record["event"] == "suppressed" and record["bounce"]["category"] == "unsubscribe"
    assert "scope tenant:acme" in record["reason"]
    assert rig.transport.tried == []


async def test_another_tenant_s_entry_does_not_suppress() -> None:
    rig = Rig()
    await rig.store.put(entry("ok@a.example", tenant="other"))
    await rig.run(body(["ok@a.example"], tenant="acme"))
    assert rig.finals()["ok@a.example"]["event"] == "delivered"


async def test_a_retry_is_checked_again_and_keeps_its_attempt_count() -> None:
    rig = Rig()
    await rig.run(body(["temp@a.example", "ok@a.example"]))
    (retry_body,) = rig.queue.bodies()
    await rig.store.put(entry("temp@a.example"))
    rig.clock.now += 400  # past the cache's minute and the retry's time
    await rig.run(retry_body)
    record = rig.finals()["temp@a.example"]
    assert record["event"] == "suppressed" and record["attempt"] == 1
    assert rig.transport.tried == ["temp@a.example", "ok@a.example"]


async def test_store_down_with_defer_holds_the_message_back_without_an_attempt() -> None:
    rig = Rig('error_retry = "2m"')
    rig.store.fail = StorageError("BatchGetItem: ProvisionedThroughputExceededException")
    assert await rig.run(body(["ok@a.example", "temp@b.example"], _attempt=2,
                              _queued_at=T0 - 60))
    assert rig.transport.tried == [] and rig.sink.records == []
    (retry_body,) = rig.queue.bodies()
    retry = decode(retry_body)
    assert retry.recipients == ("ok@a.example", "temp@b.example")
    assert retry.attempt == 2 and retry.not_before == T0 + 120
    assert retry.raw == MESSAGE  # the body travels with it, untouched
    last = retry.last["ok@a.example"]
    assert not last.tried and last.text.startswith("suppression list unreadable: BatchGetItem")
    # The list is back: the deferred message is checked and delivered.
    rig.store.fail = None
    rig.clock.now += 120
    await rig.run(retry_body)
    assert rig.finals()["ok@a.example"]["event"] == "delivered"


async def test_store_down_with_defer_past_the_deadline_expires_saying_why() -> None:
    rig = Rig()
    rig.store.fail = StorageError("table unreachable")
    await rig.run(body(["ok@a.example"], _queued_at=T0 - 3590))  # max_age 1h
    (record,) = rig.sink.records
    assert record["event"] == "expired" and rig.transport.tried == []
    assert record["reason"] == "the next attempt would be past max_age"
    assert record["response"] == {
        "code": 451, "enhanced": "4.4.7",
        "text": "never attempted: 451 4.3.0 suppression list unreadable: table unreachable"}


async def test_store_down_with_send_delivers_unchecked() -> None:
    rig = Rig('on_error = "send"')
    await rig.store.put(entry("ok-listed@a.example"))
    rig.store.fail = StorageError("table unreachable")
    await rig.run(body(["ok-listed@a.example", "ok@a.example"]))
    # Fail-open: the listed address is mailed while the list cannot be read.
    assert {r: e["event"] for r, e in rig.finals().items()} == {
        "ok-listed@a.example": "delivered", "ok@a.example": "delivered"}


async def test_a_synchronous_hard_bounce_suppresses_the_next_message() -> None:
    rig = Rig()
    await rig.run(body(["perm-1@a.example", "full@a.example", "ok@a.example"], tenant="acme"))
    events = {r: e["event"] for r, e in rig.finals().items()}
    assert events == {"perm-1@a.example": "bounced", "full@a.example": "bounced",
                      "ok@a.example": "delivered"}
    # Written behind delivery: queued, in force in this task at once.
    assert rig.store.entries == {}
    await rig.writer.flush()
    (key,) = rig.store.entries  # the mailbox-full (soft) bounce adds nothing
    assert key == ("acme", "perm-1@a.example")
    stored = rig.store.entries[key]
    assert stored.reason == "hard_bounce" and stored.created_at == T0
    assert stored.source == "bounced m-1 at 2026-09-21T14:13:20.000Z: 550 5.1.1 user unknown"
    rig.transport.tried.clear()
    await rig.run(body(["perm-1@a.example"], mid="m-2", tenant="acme"))
    record = [e for e in rig.sink.records if e["id"] == "m-2"]
    assert [e["event"] for e in record] == ["suppressed"]
    assert record[0]["bounce"]["category"] == "hard_bounce" and rig.transport.tried == []


async def test_hard_bounces_wait_for_their_events_to_be_durable() -> None:
    rig = Rig()

    async def refuse(records: object, *, batch_id: str | None = None) -> None:
        raise StorageError("events queue down")

    rig.sink.publish = refuse  # type: ignore[method-assign]
    assert not await rig.run(body(["perm@a.example"]))
    await rig.writer.flush()
    assert rig.store.entries == {}


async def test_categories_are_policy() -> None:
    rig = Rig("hard_bounce_categories = []")
    await rig.run(body(["perm@a.example"]))
    await rig.writer.flush()
    assert rig.store.entries == {}


async def test_a_5_1_1_to_the_end_of_data_for_several_recipients_suppresses_none() -> None:
    rig = Rig()
    await rig.run(body(["data-1@a.example", "data-2@a.example"]))
    assert {e["event"] for e in rig.finals().values()} == {"bounced"}
    await rig.run(body(["data-3@a.example"], mid="m-2"))  # alone: it is that mailbox
    await rig.writer.flush()
    assert list(rig.store.entries) == [(ALL_TENANTS, "data-3@a.example")]


@pytest.mark.parametrize("fault", ["missing body", "not a message"])
async def test_a_message_rejected_after_the_check_keeps_its_suppressed_finals(fault: str) -> None:
    """The suppressed recipients' finals ride with the others' `rejected`: deleting the
    original would otherwise leave them with none."""
    rig = Rig()
    await rig.store.put(entry("ok-no@a.example"))
    to = ["ok-no@a.example", "ok-yes@a.example"]
    if fault == "missing body":
        message = json.dumps({"v": 1, "id": "m-1", "from": "b@example.com", "to": to,
                              "raw_s3": "s3://spill/missing.eml"})
    else:
        message = json.dumps({"v": 1, "id": "m-1", "from": "b@example.com", "to": to,
                              "raw": base64.b64encode(b"no header section\x00").decode()})
    assert await rig.run(message)
    assert rig.transport.tried == []
    finals = rig.finals()
    assert {r: f["event"] for r, f in finals.items()} == {
        "ok-no@a.example": "suppressed", "ok-yes@a.example": "rejected"}


async def test_at_the_receive_limit_a_suppressed_recipient_is_suppressed_not_failed() -> None:
    """Given up (receive 4 of 5): the listed recipient's final is the `suppressed` it
    would have had on any receive; only the other fails and goes to the DLQ."""
    rig = Rig()
    await rig.store.put(entry("ok-no@a.example"))
    assert await rig.run(body(["ok-no@a.example", "ok-yes@a.example"], tenant="acme"),
                         max_receives=5, receive_count=4)
    assert rig.transport.tried == []
    finals = rig.finals()
    assert {r: f["event"] for r, f in finals.items()} == {
        "ok-no@a.example": "suppressed", "ok-yes@a.example": "failed"}
    assert finals["ok-no@a.example"]["reason"].startswith(
        "on the suppression list: complaint in scope global")
    assert "received 4 times" in finals["ok-yes@a.example"]["reason"]
    (dead,) = rig.dlq.bodies()
    assert decode(dead).recipients == ("ok-yes@a.example",)


async def test_at_the_receive_limit_with_every_recipient_suppressed_nothing_is_kept() -> None:
    rig = Rig()
    await rig.store.put(entry("ok@a.example"))
    assert await rig.run(body(["ok@a.example"]), max_receives=5, receive_count=4)
    assert [e["event"] for e in rig.sink.records] == ["suppressed"]
    assert len(rig.dlq) == 0


@pytest.mark.parametrize("on_error", ["defer", "send"])
async def test_at_the_receive_limit_an_unreadable_list_fails_every_recipient(
        on_error: str) -> None:
    """No later receive to defer to, nothing sent to fail open: each recipient fails and
    stays in the DLQ copy, whose redrive checks the list again."""
    rig = Rig(f'on_error = "{on_error}"')
    await rig.store.put(entry("ok-no@a.example"))
    rig.store.fail = StorageError("table unreachable")
    assert await rig.run(body(["ok-no@a.example", "ok-yes@a.example"]),
                         max_receives=5, receive_count=4)
    assert {e["event"] for e in rig.finals().values()} == {"failed"}
    (dead,) = rig.dlq.bodies()
    assert decode(dead).recipients == ("ok-no@a.example", "ok-yes@a.example")
