"""The sender's return paths: one signed MAIL FROM and one transaction per recipient
when the From domain has a bounce domain; the caller's sender otherwise."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Sequence

from test_lifecycle import ScriptedTransport

from quiver.bounce import default_classifier
from quiver.delivery import Attempt
from quiver.dkim import SignerSet
from quiver.policy import parse_policy
from quiver.returnpath import ReturnPaths, ReturnPathVerifier, Verified, rotated
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import Outgoing, ReturnPathRecord, StorageError
from quiver.storage.memory import (
    MemoryBodyStore,
    MemoryEventSink,
    MemoryQueue,
    MemoryReturnPaths,
)

T0 = 1_790_000_000.0
POLICY = parse_policy("""
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[return_path]
key_file = "unused.json"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"
""")


def raw(from_addr: str) -> bytes:
    return (f"From: News <{from_addr}>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
            ).encode()


class RecordingTransport(ScriptedTransport):
    def __init__(self) -> None:
        super().__init__()
        self.senders: list[tuple[str, list[str]]] = []

    async def deliver(self, *, pool: str, domain: str, sender: str,
                      recipients: Sequence[str], message: bytes,
                      seven_bit=None) -> list[Attempt]:
        self.senders.append((sender, list(recipients)))
        return await super().deliver(pool=pool, domain=domain, sender=sender,
                                     recipients=recipients, message=message,
                                     seven_bit=seven_bit)


class FailingStore(MemoryReturnPaths):
    async def put(self, records: Sequence[ReturnPathRecord]) -> None:
        raise StorageError("DynamoDB is throttling")


class Rig:
    def __init__(self, store: MemoryReturnPaths | None = None) -> None:
        self.clock = lambda: T0
        self.queue = MemoryQueue("outbound")
        self.sink = MemoryEventSink()
        self.transport = RecordingTransport()
        self.store = store or MemoryReturnPaths(clock=self.clock)
        self.paths = ReturnPaths(rotated(None, now=T0 - 60), clock=self.clock)
        self.completer = Completer(queue=self.queue, dlq=MemoryQueue("dlq"), sink=self.sink,
                                   max_delay=0.01)
        self.handler = MessageHandler(
            policy=POLICY, transport=self.transport, signers=SignerSet([]),
            bodies=MemoryBodyStore("spill"), completer=self.completer,
            classifier=default_classifier(), rng=random.Random(1), clock=self.clock,
            return_paths=self.paths, return_path_store=self.store,
        )
        self.verifier = ReturnPathVerifier(
            keys=self.paths.ring, store=self.store,
            bounce_domains=POLICY.return_path.bounce_domains(), clock=self.clock)

    def run(self, *, sender: str, to: list[str], from_addr: str = "news@example.com",
            **extra: str) -> bool:
        body = json.dumps({"v": 1, "id": "m-1", "from": sender, "to": to,
                           "raw": base64.b64encode(raw(from_addr)).decode(), **extra})

        async def go() -> bool:
            await self.queue.send([Outgoing(body=body)])
            (received,) = await self.queue.receive(max_messages=1, wait_seconds=0,
                                                   visibility=30)
            self.completer.start()
            try:
                return await self.handler.handle(received)
            finally:
                await self.completer.close()

        return asyncio.run(go())


def test_each_recipient_gets_its_own_signed_return_path_and_transaction() -> None:
    rig = Rig()
    to = ["ok-1@a.example", "ok-2@a.example", "perm@b.example"]
    assert rig.run(sender="news@example.com", to=to, tenant="acme", campaign="dec")
    assert sorted(r for _, rs in rig.transport.senders for r in rs) == sorted(to)
    assert all(len(rs) == 1 for _, rs in rig.transport.senders)
    by_rcpt = {rs[0]: s for s, rs in rig.transport.senders}
    assert len(set(by_rcpt.values())) == 3
    for rcpt, sender in by_rcpt.items():
        local, _, domain = sender.partition("@")
        assert domain == "bounces.example.com" and local.startswith("b-")
        assert rig.verifier.verify(sender) == Verified(
            message_id="m-1", recipient=rcpt, tenant="acme", campaign="dec", key_id=1,
            bounce_domain="bounces.example.com")
    for record in rig.sink.records:
        # `from` stays the caller's; the return path used is beside it.
        assert record["from"] == "news@example.com"
        assert record["return_path"] == by_rcpt[record["rcpt"]]


def test_a_null_reverse_path_is_never_rewritten() -> None:
    rig = Rig()
    assert rig.run(sender="", to=["ok-1@a.example", "ok-2@a.example"])
    assert rig.transport.senders == [("", ["ok-1@a.example", "ok-2@a.example"])]
    assert not rig.store.records
    assert all("return_path" not in r for r in rig.sink.records)


def test_mail_from_a_domain_without_a_bounce_domain_keeps_the_callers_sender() -> None:
    rig = Rig()
    assert rig.run(sender="bounce@other.example", to=["ok-1@a.example", "ok-2@a.example"],
                   from_addr="news@other.example")
    assert rig.transport.senders == [("bounce@other.example",
                                      ["ok-1@a.example", "ok-2@a.example"])]
    assert all("return_path" not in r for r in rig.sink.records)


def test_the_from_header_decides_not_the_envelope_sender() -> None:
    rig = Rig()
    assert rig.run(sender="bounce@other.example", to=["ok-1@a.example"],
                   from_addr="news@EXAMPLE.com")
    ((sender, _),) = rig.transport.senders
    assert sender.endswith("@bounces.example.com")


def test_a_store_failure_leaves_the_message_for_redelivery_unsent() -> None:
    rig = Rig(store=FailingStore())
    assert not rig.run(sender="news@example.com", to=["ok-1@a.example"])
    assert rig.transport.senders == [] and rig.sink.records == []


def test_deferred_events_carry_the_return_path_and_a_retry_names_the_same_reference() -> None:
    rig = Rig()
    assert rig.run(sender="news@example.com", to=["temp@a.example"])
    (event,) = rig.sink.records
    assert event["event"] == "deferred"
    assert event["return_path"] == rig.transport.senders[0][0]
    assert len(rig.queue.bodies()) == 1  # re-enqueued
    (reference,) = rig.store.records
    # The retry's attempt, after a rotation, signs with the new key but names (and
    # rewrites) the same stored reference.
    rig.paths.ring = rotated(rig.paths.ring, now=T0)
    again, record = rig.paths.address(bounce_domain="bounces.example.com", message_id="m-1",
                                      recipient="temp@a.example", tenant=None, campaign=None)
    assert record.reference == reference and again != event["return_path"]
