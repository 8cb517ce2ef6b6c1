"""Message lifecycle against in-memory storage: outcomes, durability order, bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from collections.abc import Awaitable, Callable, Sequence

import pytest

from quiver.bounce import default_classifier
from quiver.delivery import Attempt, Path
from quiver.dkim import DkimSigner, SignerSet, generate_private_key
from quiver.dkim.pool import SigningPool
from quiver.envelope import decode
from quiver.policy import parse_policy
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.smtp.reply import parse_reply
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

POLICY = parse_policy("""
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[pools.other]
sources = ["s1"]
[retry]
first = "5m"
max_age = "1h"
""")
PATH = Path(source="s1", source_ip="192.0.2.1", mx="mx.example.org", mx_ip="192.0.2.9",
            site="mx.example.org", provider=None, tls="TLSv1.3")
MESSAGE = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class ScriptedTransport:
    """Answers each recipient by its local part: ok, temp, perm, conn (not its fault)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bytes]] = []
        self.seven_bit: list[Callable[[], Awaitable[bytes]] | None] = []

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Callable[[], Awaitable[bytes]] | None = None
                      ) -> list[Attempt]:
        self.calls.append((domain, list(recipients), message))
        self.seven_bit.append(seven_bit)
        out = []
        for r in recipients:
            kind = r.split("@")[0].split("-")[0]
            reply = {"ok": (250, "2.0.0 ok"), "temp": (451, "4.3.0 try later"),
                     "perm": (550, "5.1.1 user unknown"), "conn": (421, "4.4.1 no route")}[kind]
            out.append(Attempt(rcpt=r, reply=parse_reply(*reply), path=PATH,
                               counts=kind != "conn"))
        return out


class Rig:
    def __init__(self, signers: SignerSet | None = None, *,
                 signing: SigningPool | None = None) -> None:
        self.queue = MemoryQueue("outbound")
        self.dlq = MemoryQueue("dlq")
        self.sink = MemoryEventSink()
        self.bodies = MemoryBodyStore("spill")
        self.transport = ScriptedTransport()
        self.completer = Completer(queue=self.queue, dlq=self.dlq, sink=self.sink,
                                   max_delay=0.01)
        self.handler = MessageHandler(
            signing=signing,
            policy=POLICY, transport=self.transport, signers=signers or SignerSet([]),
            bodies=self.bodies, completer=self.completer, classifier=default_classifier(),
            rng=random.Random(1),
        )

    async def run_one(self, body: str) -> bool:
        await self.queue.send([Outgoing(body=body)])
        (received,) = await self.queue.receive(max_messages=1, wait_seconds=0, visibility=30)
        self.completer.start()
        try:
            return await self.handler.handle(received)
        finally:
            await self.completer.close()


def body(to: list[str], **extra) -> str:
    return json.dumps({"v": 1, "id": "m-1", "from": "bounce@example.com", "to": to,
                       "raw": base64.b64encode(MESSAGE).decode(), **extra})


async def test_each_recipient_gets_its_own_outcome_and_pending_ones_are_re_enqueued() -> None:
    rig = Rig()
    done = await rig.run_one(body(["ok@a.example", "temp@a.example", "perm@b.example"]))
    assert done
    by_rcpt = {r["rcpt"]: r for r in rig.sink.records}
    assert by_rcpt["ok@a.example"]["event"] == "delivered"
    assert by_rcpt["perm@b.example"]["event"] == "bounced"
    assert by_rcpt["perm@b.example"]["bounce"]["kind"] == "hard"
    deferred = by_rcpt["temp@a.example"]
    assert deferred["event"] == "deferred" and deferred["next_attempt_at"].endswith("Z")
    assert deferred["response"] == {"code": 451, "enhanced": "4.3.0", "text": "try later"}
    for r in rig.sink.records:
        assert r["attempt"] == 1 and r["source"] == "s1" and r["mx_ip"] == "192.0.2.9"
    # The original is gone; one retry holds only the pending recipient.
    (retry_body,) = rig.queue.bodies()
    retry = decode(retry_body)
    assert retry.recipients == ("temp@a.example",)
    assert retry.attempt == 1 and retry.not_before is not None and retry.queued_at is not None
    assert sorted(c[0] for c in rig.transport.calls) == ["a.example", "b.example"]


async def test_failure_that_was_not_the_recipients_does_not_count_an_attempt() -> None:
    rig = Rig()
    await rig.run_one(body(["conn@a.example"]))
    (retry_body,) = rig.queue.bodies()
    assert decode(retry_body).attempt == 0


async def test_retry_past_max_age_expires() -> None:
    import time

    rig = Rig()
    # Queued 50 min ago with max_age 1 h: the 4th attempt fails, the next would be late.
    await rig.run_one(body(["temp@a.example"], _queued_at=time.time() - 3000, _attempt=3))
    (record,) = rig.sink.records
    assert record["event"] == "expired" and record["attempt"] == 4
    assert len(rig.queue) == 0


async def test_expires_in_the_past_expires_without_an_attempt() -> None:
    rig = Rig()
    await rig.run_one(body(["ok@a.example"], expires="2020-01-01T00:00:00Z"))
    (record,) = rig.sink.records
    assert record["event"] == "expired"
    assert rig.transport.calls == []


@pytest.mark.parametrize(("raw", "reason"), [
    ("{not json", "body: not valid JSON"),
    (body(["ok@a.example\r\nRCPT TO:<evil@x.example>"]), "to[0]: invalid address"),
    (body(["ok@a.example"], pool="nope"), "pool: unknown pool"),
])
async def test_bad_input_is_rejected_and_kept_in_the_dlq_untouched(raw: str, reason: str) -> None:
    rig = Rig()
    assert await rig.run_one(raw)
    (record,) = rig.sink.records
    assert record["event"] == "rejected" and reason in record["reason"]
    assert rig.dlq.bodies() == [raw]
    assert reason in rig.dlq.attributes()[0]["quiver-reason"]
    assert len(rig.queue) == 0
    assert rig.transport.calls == []


async def test_nothing_is_deleted_until_events_are_accepted() -> None:
    rig = Rig()
    rig.sink.fail_next = 1
    done = await rig.run_one(body(["ok@a.example", "temp@a.example"]))
    assert not done
    assert rig.sink.records == []
    # The original is still there (invisible until its timeout), and no retry was sent.
    assert len(rig.queue) == 1 and rig.queue.in_flight() == 1


async def test_not_yet_due_message_is_postponed_without_an_attempt() -> None:
    import time

    rig = Rig()
    original = body(["ok@a.example"], _not_before=time.time() + 3600)
    await rig.run_one(original)
    assert rig.sink.records == [] and rig.transport.calls == []
    assert rig.queue.bodies() == [original]


async def test_body_from_s3_and_missing_object() -> None:
    rig = Rig()
    uri = await rig.bodies.put("k/1.eml", MESSAGE)
    raw = json.dumps({"v": 1, "id": "s3", "from": "b@example.com", "to": ["ok@a.example"],
                      "raw_s3": uri})
    await rig.run_one(raw)
    assert rig.transport.calls[0][2] == MESSAGE
    assert rig.sink.records[0]["event"] == "delivered"

    rig = Rig()
    raw = raw.replace("k/1.eml", "k/missing.eml")
    await rig.run_one(raw)
    assert rig.sink.records[0]["event"] == "rejected"


async def test_message_is_dkim_signed_for_its_from_domain() -> None:
    pem = generate_private_key("ed25519-sha256")
    signer = DkimSigner.from_pem(domain="example.com", selector="s", algorithm="ed25519-sha256",
                                 pem=pem, headers=["from", "to", "subject"])
    rig = Rig(SignerSet([signer]))
    await rig.run_one(body(["ok@a.example"]))
    sent = rig.transport.calls[0][2]
    assert sent.startswith(b"DKIM-Signature:") and sent.endswith(MESSAGE)


async def test_signing_on_the_pool_gives_the_same_signature() -> None:
    pem = generate_private_key("rsa-sha256")
    signer = DkimSigner.from_pem(domain="example.com", selector="s", algorithm="rsa-sha256",
                                 pem=pem, headers=["from", "to", "subject"])
    pool = SigningPool(1)
    # The pool goes in as the sender's wiring passes it: the constructor's `signing`.
    inline, pooled = Rig(SignerSet([signer])), Rig(SignerSet([signer]), signing=pool)
    try:
        for rig in (inline, pooled):
            await rig.run_one(body(["ok@a.example"]))
    finally:
        pool.close()
    signed = [rig.transport.calls[0][2] for rig in (inline, pooled)]
    # t= may differ by a second between the two; the rest of the head is the same bytes.
    inline_head, pooled_head = (re.sub(rb"t=\d+;", b"", m).split(b"b=")[0] for m in signed)
    assert inline_head == pooled_head
    assert all(m.startswith(b"DKIM-Signature:") and m.endswith(MESSAGE) for m in signed)


async def test_many_messages_complete_in_shared_batches() -> None:
    rig = Rig()
    for i in range(50):
        await rig.queue.send([Outgoing(body=body(["ok@a.example"]).replace("m-1", f"m-{i}"))])
    received = await rig.queue.receive(max_messages=50, wait_seconds=0, visibility=30)
    rig.completer.start()
    results = await asyncio.gather(*(rig.handler.handle(r) for r in received))
    await rig.completer.close()
    assert all(results) and len(rig.queue) == 0
    assert sorted(r["id"] for r in rig.sink.records) == sorted(f"m-{i}" for i in range(50))
