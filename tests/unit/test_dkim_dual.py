"""Dual DKIM signing: a domain with an RSA and an ed25519 key ([[dkim]] twice) gets
one DKIM-Signature per key from the sender, on the event loop and on the signing
threads, and dkimpy (a verifier other than the signer) verifies each against keys
published through its dnsfunc; the policy refuses a selector twice or too many keys."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from pathlib import Path

import dkim
import pytest
from test_dkim import Zone
from test_lifecycle import ScriptedTransport

from quiver.bounce import default_classifier
from quiver.dkim import dns_txt_value, generate_private_key, signers_from_policy
from quiver.dkim.keyring import MAX_KEYS_PER_DOMAIN
from quiver.dkim.pool import SigningPool
from quiver.policy import PolicyError, parse_policy
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[[dkim]]
domain = "example.com"
selector = "r2026"
algorithm = "rsa-sha256"
key_file = "r2026.pem"
[[dkim]]
domain = "example.com"
selector = "e2026"
algorithm = "ed25519-sha256"
key_file = "e2026.pem"
"""
MESSAGE = (b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: two keys\r\n"
           b"Date: Fri, 4 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
           b"\r\nbody line\r\n")


class Transport(ScriptedTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    async def deliver(self, *, pool, domain, sender, recipients, message,  # type: ignore[no-untyped-def]
                      seven_bit=None):
        self.sent.append(message)
        return await super().deliver(pool=pool, domain=domain, sender=sender,
                                     recipients=recipients, message=message,
                                     seven_bit=seven_bit)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Zone]:
    folder = tmp_path_factory.mktemp("keys")
    zone = Zone()
    policy = parse_policy(BASE)
    for key in policy.dkim:
        pem = generate_private_key(key.algorithm)
        (folder / f"{key.selector}.pem").write_bytes(pem)
        zone.records[f"{key.selector}._domainkey.{key.domain}"] = dns_txt_value(pem)
    return folder, zone


def send(folder: Path, *, threads: int) -> bytes:
    policy = parse_policy(BASE)
    signers = signers_from_policy(policy.dkim, base_dir=folder)
    transport = Transport()
    queue = MemoryQueue("outbound")
    completer = Completer(queue=queue, dlq=MemoryQueue("dlq"), sink=MemoryEventSink(),
                          max_delay=0.01)

    async def go() -> None:
        pool = SigningPool(threads) if threads else None
        handler = MessageHandler(
            policy=policy, transport=transport, signers=signers,
            bodies=MemoryBodyStore("spill"), completer=completer,
            classifier=default_classifier(), rng=random.Random(1), signing=pool,
        )
        body = json.dumps({"v": 1, "id": "m-1", "from": "news@example.com",
                           "to": ["ok@example.org"], "raw": base64.b64encode(MESSAGE).decode()})
        await queue.send([Outgoing(body=body)])
        (received,) = await queue.receive(max_messages=1, wait_seconds=0, visibility=30)
        completer.start()
        try:
            assert await handler.handle(received)
        finally:
            await completer.close()
            if pool is not None:
                await pool.aclose()

    asyncio.run(go())
    (sent,) = transport.sent
    return sent


@pytest.mark.parametrize("threads", [0, 2])
def test_each_key_of_the_domain_adds_a_signature_that_dkimpy_verifies(
    keys: tuple[Path, Zone], threads: int,
) -> None:
    folder, zone = keys
    sent = send(folder, threads=threads)
    verifier = dkim.DKIM(sent)
    fields = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    assert len(fields) == 2
    found = set()
    for idx, field in enumerate(fields):
        tags = dict(t.strip().split(b"=", 1) for t in field.split(b";") if b"=" in t)
        found.add((tags[b"s"].strip(), tags[b"a"].strip()))
        assert verifier.verify(idx=idx, dnsfunc=zone), (idx, field[:80])
    assert found == {(b"r2026", b"rsa-sha256"), (b"e2026", b"ed25519-sha256")}
    # A receiver that knows only one of the keys (the other not yet, or no longer,
    # published) still finds a signature it can check: rotation is not a cutover.
    for selector in ("r2026", "e2026"):
        partial = Zone()
        partial.records = {k: v for k, v in zone.records.items() if k.startswith(selector)}
        results = [dkim.DKIM(sent).verify(idx=i, dnsfunc=partial) for i in range(2)]
        assert sorted(results) == [False, True]


def test_the_policy_refuses_a_selector_twice_and_too_many_keys() -> None:
    twice = BASE + '[[dkim]]\ndomain = "example.com"\nselector = "r2026"\nkey_file = "x.pem"\n'
    with pytest.raises(PolicyError, match=r"dkim\[2\]\.selector: example\.com has a key "
                                          "with selector r2026 already"):
        parse_policy(twice)
    many = BASE + "".join(
        f'[[dkim]]\ndomain = "example.com"\nselector = "x{i}"\nkey_file = "x.pem"\n'
        for i in range(MAX_KEYS_PER_DOMAIN - 1))
    with pytest.raises(PolicyError, match=rf"example\.com has {MAX_KEYS_PER_DOMAIN} keys "
                                          rf"already; at most {MAX_KEYS_PER_DOMAIN}"):
        parse_policy(many)
    assert len(parse_policy(many.rsplit("[[dkim]]", 1)[0]).dkim) == MAX_KEYS_PER_DOMAIN
