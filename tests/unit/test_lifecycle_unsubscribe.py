"""The sender's one-click unsubscribe headers: added before DKIM signing when the
message has none, both signed, one token per recipient; a message's own kept."""

from __future__ import annotations

import asyncio
import base64
import email
import json
import random
import re
from collections.abc import Sequence

import dkim
import pytest
from test_dkim import Zone, wire
from test_lifecycle import ScriptedTransport

from quiver.bounce import default_classifier
from quiver.delivery import Attempt
from quiver.dkim import DkimSigner, SignerSet, generate_private_key
from quiver.message import WireReady
from quiver.policy import Policy, parse_policy
from quiver.returnpath import ReturnPaths, rotated
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import Outgoing
from quiver.storage.memory import (
    MemoryBodyStore,
    MemoryEventSink,
    MemoryQueue,
    MemoryReturnPaths,
)
from quiver.unsubscribe import Subject, UnsubscribeVerifier, Verified
from quiver.unsubscribe.headers import UnsubscribeHeaders

T0 = 1_790_000_000.0
BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[return_path]
key_file = "unused.json"
[feedback]
addresses = ["fbl@bounces.example.com"]  # SES receives for the mailto's domain
[[unsubscribe.domains]]
from = "example.com"
url = "https://unsubscribe.example.com/u/"
mailto = "unsubscribe@bounces.example.com"
"""
POLICY = parse_policy(BASE)
URL = re.compile(rb"<https://unsubscribe\.example\.com/u/([A-Za-z0-9_-]+)>")


def raw(extra: str = "") -> bytes:
    return (f"From: News <news@example.com>\r\nTo: x@example.org\r\n{extra}Subject: hi\r\n"
            "\r\nbody\r\n").encode()


class Transport(ScriptedTransport):
    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, bytes] = {}
        self.senders: dict[str, str] = {}

    async def deliver(self, *, pool: str, domain: str, sender: str,
                      recipients: Sequence[str], message: bytes,
                      seven_bit=None) -> list[Attempt]:
        for rcpt in recipients:
            self.messages[rcpt] = message
            self.senders[rcpt] = sender
        return await super().deliver(pool=pool, domain=domain, sender=sender,
                                     recipients=recipients, message=message,
                                     seven_bit=seven_bit)


@pytest.fixture(scope="module")
def signer_and_zone() -> tuple[DkimSigner, Zone]:
    pem = generate_private_key("rsa-sha256")
    signer = DkimSigner.from_pem(domain="example.com", selector="s", algorithm="rsa-sha256",
                                 pem=pem)
    zone = Zone()
    zone.add(signer, pem)
    return signer, zone


class Rig:
    def __init__(self, signer: DkimSigner, *, policy: Policy = POLICY,
                 headers: UnsubscribeHeaders | None = None,
                 return_paths: bool = False) -> None:
        self.clock = lambda: T0
        self.queue = MemoryQueue("outbound")
        self.sink = MemoryEventSink()
        self.transport = Transport()
        self.ring = rotated(None, now=T0 - 60)
        self.completer = Completer(queue=self.queue, dlq=MemoryQueue("dlq"), sink=self.sink,
                                   max_delay=0.01)
        self.handler = MessageHandler(
            policy=policy, transport=self.transport, signers=SignerSet([signer]),
            bodies=MemoryBodyStore("spill"), completer=self.completer,
            classifier=default_classifier(), rng=random.Random(1), clock=self.clock,
            unsubscribe=headers or UnsubscribeHeaders(self.ring, clock=self.clock),
            return_paths=ReturnPaths(self.ring, clock=self.clock) if return_paths else None,
            return_path_store=MemoryReturnPaths(clock=self.clock) if return_paths else None,
        )
        self.verifier = UnsubscribeVerifier(keys=self.ring, clock=self.clock)

    def run(self, *, to: list[str], message: bytes, msg_id: str = "m-1", **extra: str) -> bool:
        body = json.dumps({"v": 1, "id": msg_id, "from": "news@example.com", "to": to,
                           "raw": base64.b64encode(message).decode(), **extra})

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


def signed_headers(message: bytes) -> list[str]:
    field = email.message_from_bytes(message)["DKIM-Signature"]
    h = re.search(r"h=([^;]*);", re.sub(r"\s+", "", field))
    assert h is not None
    return h.group(1).lower().split(":")


def test_one_recipient_gets_both_headers_signed_and_dkimpy_verifies(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, zone = signer_and_zone
    rig = Rig(signer)
    assert rig.run(to=["ok@a.example"], message=raw(), tenant="acme", campaign="dec")
    (sent,) = rig.transport.messages.values()
    assert len(rig.transport.calls) == 1
    parsed = email.message_from_bytes(sent)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    value = parsed["List-Unsubscribe"]
    assert value.startswith("<https://unsubscribe.example.com/u/")
    assert "<mailto:unsubscribe@bounces.example.com?subject=unsubscribe-" in value
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signed_headers(sent))
    assert zone.verifies(wire(sent))
    match = URL.search(sent)
    assert match is not None and len(match.group(1)) < 200
    assert rig.verifier.verify(match.group(1).decode()) == Verified(
        subject=Subject(tenant="acme", campaign="dec", message_id="m-1",
                        recipient="ok@a.example"), key_id=1)
    # The mailto carries the same token.
    assert f"unsubscribe-{match.group(1).decode()}>" in value
    # Changing the signed header breaks the signature (RFC 8058 4: it must be signed).
    forged = wire(sent).replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=One-Clack")
    assert not dkim.verify(forged, dnsfunc=zone)


def test_each_recipient_gets_its_own_signed_copy_and_transaction(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, zone = signer_and_zone
    rig = Rig(signer)
    to = ["ok-1@a.example", "ok-2@a.example", "ok-3@b.example"]
    assert rig.run(to=to, message=raw(), tenant="acme")
    assert sorted(rig.transport.messages) == sorted(to)
    assert all(len(rcpts) == 1 for _, rcpts, _ in rig.transport.calls)
    for rcpt, sent in rig.transport.messages.items():
        assert zone.verifies(wire(sent))
        # Its headers and signature checked out as whole lines: SMTP sends it unscanned.
        assert type(sent) is WireReady
        match = URL.search(sent)
        assert match is not None
        verified = rig.verifier.verify(match.group(1).decode())
        assert isinstance(verified, Verified) and verified.subject.recipient == rcpt
    assert [e["event"] for e in rig.sink.records] == ["delivered"] * 3


@pytest.mark.parametrize("present", [
    "List-Unsubscribe: <https://lists.example.com/leave?id=7>\r\n",
    "list-unsubscribe: <mailto:leave@example.com>\r\n",
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
])
def test_a_message_with_its_own_header_keeps_it_and_gets_none_added(
        present: str, signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, zone = signer_and_zone
    rig = Rig(signer)
    assert rig.run(to=["ok-1@a.example", "ok-2@a.example"], message=raw(present))
    # One transaction for both: nothing names a recipient, so one copy serves all.
    ((_, rcpts, sent),) = rig.transport.calls
    assert rcpts == ["ok-1@a.example", "ok-2@a.example"]
    assert present.encode() in sent
    assert b"unsubscribe.example.com" not in sent
    assert len(re.findall(rb"(?im)^list-unsubscribe", sent)) == 1
    assert zone.verifies(wire(sent))


@pytest.mark.parametrize("rule", [
    'add = "never"', None,
])
def test_no_rule_or_add_never_adds_nothing(
        rule: str | None, signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, _ = signer_and_zone
    text = BASE + rule + "\n" if rule else BASE.replace('from = "example.com"\nurl',
                                                        'from = "other.example"\nurl')
    rig = Rig(signer, policy=parse_policy(text))
    assert rig.run(to=["ok@a.example"], message=raw())
    (sent,) = rig.transport.messages.values()
    assert b"List-Unsubscribe" not in sent


def test_a_tenant_rule_wins_over_the_domain_rule(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, _ = signer_and_zone
    policy = parse_policy(BASE + """
[[unsubscribe.domains]]
from = "example.com"
tenant = "acme"
url = "https://acme.example.com/leave/"
""")
    rig = Rig(signer, policy=policy)
    assert rig.run(to=["ok@a.example"], message=raw(), tenant="acme")
    (sent,) = rig.transport.messages.values()
    assert b"<https://acme.example.com/leave/" in sent and b"mailto:" not in sent


def test_a_recipient_too_long_for_a_token_gets_its_mail_without_the_headers(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, zone = signer_and_zone
    long_url = "https://unsubscribe.example.com/" + "p" * 150 + "/"
    rig = Rig(signer, policy=parse_policy(BASE.replace("https://unsubscribe.example.com/u/",
                                                       long_url)))
    rcpt = "ok-" + "x" * 60 + "@" + ".".join(["d" * 60] * 3) + ".example"
    # Every field at its contract maximum: the token alone is about 880 characters.
    assert rig.run(to=[rcpt], message=raw(), tenant="t" * 128, campaign="c" * 128,
                   msg_id="m" * 128)
    (sent,) = rig.transport.messages.values()
    assert b"List-Unsubscribe" not in sent
    assert zone.verifies(wire(sent))
    assert [e["event"] for e in rig.sink.records] == ["delivered"]


def test_with_return_paths_each_copy_goes_with_its_own_signed_mail_from(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    signer, zone = signer_and_zone
    policy = parse_policy(BASE.replace('key_file = "unused.json"\n', 'key_file = "unused.json"\n'
                                       '[[return_path.domains]]\nfrom = "example.com"\n'
                                       'bounce = "bounces.example.com"\n'))
    rig = Rig(signer, policy=policy, return_paths=True)
    to = ["ok-1@a.example", "ok-2@a.example"]
    assert rig.run(to=to, message=raw(), tenant="acme")
    assert len(rig.transport.calls) == 2
    assert len(set(rig.transport.senders.values())) == 2
    assert all(s.startswith("b-") and s.endswith("@bounces.example.com")
               for s in rig.transport.senders.values())
    for rcpt, sent in rig.transport.messages.items():
        assert zone.verifies(wire(sent))
        match = URL.search(sent)
        assert match is not None
        verified = rig.verifier.verify(match.group(1).decode())
        assert isinstance(verified, Verified) and verified.subject.recipient == rcpt


def test_a_ring_with_no_key_that_may_sign_yet_sends_the_mail_without_headers(
        signer_and_zone: tuple[DkimSigner, Zone]) -> None:
    """Every key retired or not yet active is the operator's to fix: the mail still
    goes, without List-Unsubscribe and with the caller's envelope sender."""
    signer, zone = signer_and_zone
    early = rotated(None, now=T0 + 3600)  # its only key is created an hour from now
    policy = parse_policy(BASE.replace('key_file = "unused.json"\n', 'key_file = "unused.json"\n'
                                       '[[return_path.domains]]\nfrom = "example.com"\n'
                                       'bounce = "bounces.example.com"\n'))
    rig = Rig(signer, headers=UnsubscribeHeaders(early, clock=lambda: T0))
    rig.handler = MessageHandler(
        policy=policy, transport=rig.transport, signers=SignerSet([signer]),
        bodies=MemoryBodyStore("spill"), completer=rig.completer,
        classifier=default_classifier(), rng=random.Random(1), clock=rig.clock,
        unsubscribe=UnsubscribeHeaders(early, clock=rig.clock),
        return_paths=ReturnPaths(early, clock=rig.clock),
        return_path_store=MemoryReturnPaths(clock=rig.clock))
    assert rig.run(to=["ok-1@a.example", "ok-2@a.example"], message=raw())
    sent = list(rig.transport.messages.values())
    assert sent and all(b"List-Unsubscribe" not in m and zone.verifies(wire(m)) for m in sent)
    assert sorted(e["event"] for e in rig.sink.records) == ["delivered", "delivered"]
    assert all("return_path" not in e for e in rig.sink.records)
    assert set(rig.transport.senders.values()) == {"news@example.com"}
