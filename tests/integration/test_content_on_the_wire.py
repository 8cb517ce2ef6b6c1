"""Long lines and 8-bit content through the real lifecycle, scheduler and SMTP session into
receivers on loopback: an aiosmtpd MX with and without 8BITMIME, and a scripted MX that
offers PIPELINING (the next message's MAIL written behind the current body). What arrives
has no line over 998 octets, says BODY=8BITMIME exactly when the server offered it, is
7-bit otherwise, and its DKIM signature verifies with dkimpy."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
from collections.abc import Sequence
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from test_smtp_wire import Scripted, scripted_policy_text

from quiver.bounce import default_classifier
from quiver.devstack.processes import free_port
from quiver.dkim import DkimSigner, SignerSet, dns_txt_value, generate_private_key
from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

pytestmark = pytest.mark.integration

TEXT = "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade.\r\n"
EIGHT_BIT = (b"From: News <news@example.com>\r\nTo: u@d.test\r\nSubject: dessert\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT.encode() * 3)
LONG = (b"From: News <news@example.com>\r\nTo: u@d.test\r\nSubject: one long line\r\n\r\n"
        + b"0123456789" * 150 + b"\r\n")


class Keys:
    def __init__(self) -> None:
        pem = generate_private_key("rsa-sha256")
        self.signer = DkimSigner.from_pem(domain="example.com", selector="w",
                                          algorithm="rsa-sha256", pem=pem)
        self.record = dns_txt_value(pem).encode()

    def lookup(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.record if name.decode().rstrip(".") == "w._domainkey.example.com" else None

    def verifies(self, message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=self.lookup))


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


class Sink:
    """An aiosmtpd handler that keeps what each transaction's MAIL said and its bytes."""

    def __init__(self, *, offer_8bitmime: bool) -> None:
        self.offer = offer_8bitmime
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if self.offer or "8BITMIME" not in r]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((list(envelope.mail_options), bytes(envelope.original_content)))
        return "250 2.0.0 stored"


async def send(port: int, raws: Sequence[bytes], keys: Keys, *, content: str = "",
               throttle: str = "") -> list[dict[str, Any]]:
    """Each raw message to u<n>@d.test through the lifecycle and the scheduler; the events."""
    section = f"\n[content]\n{content}" if content else ""
    policy = parse_policy(scripted_policy_text(port, throttle + section))
    scheduler = Scheduler(policy=policy, picker=SourcePicker(policy),
                          resolver=MxResolver(routes=dict(policy.delivery.routes)))
    queue, dlq, sink = MemoryQueue(), MemoryQueue(), MemoryEventSink()
    completer = Completer(queue=queue, dlq=dlq, sink=sink, max_delay=0.01)
    handler = MessageHandler(policy=policy, transport=scheduler,
                             signers=SignerSet([keys.signer]), bodies=MemoryBodyStore(),
                             completer=completer, classifier=default_classifier())
    await queue.send([Outgoing(body=json.dumps({
        "v": 1, "id": f"m{n}", "from": "bounces@example.com", "to": [f"u{n}@d.test"],
        "raw": base64.b64encode(raw).decode()})) for n, raw in enumerate(raws)])
    received = await queue.receive(max_messages=10, wait_seconds=0, visibility=60)
    completer.start()
    try:
        # All handled at once: with one connection, the second message's envelope goes
        # out behind the first one's body (pipelining), before its own turn.
        await asyncio.wait_for(asyncio.gather(*(handler.handle(r) for r in received)), 60)
    finally:
        await completer.close()
        await scheduler.close()
    assert len(dlq) == 0
    return sorted(sink.records, key=lambda r: r["id"])


class Aio:
    def __init__(self, *, offer_8bitmime: bool) -> None:
        self.sink = Sink(offer_8bitmime=offer_8bitmime)
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=free_port())

    def __enter__(self) -> Aio:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return int(self.controller.port)


def lines(message: bytes) -> list[bytes]:
    return message.split(b"\r\n")


def text_of(message: bytes) -> str:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    body = parsed.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


async def test_a_server_offering_8bitmime_gets_body_8bitmime_and_the_8bit_bytes(keys) -> None:
    with Aio(offer_8bitmime=True) as mx:
        events = await send(mx.port, [EIGHT_BIT], keys)
    assert [e["event"] for e in events] == ["delivered"]
    ((options, got),) = mx.sink.received
    assert options == ["BODY=8BITMIME"]
    assert got.endswith(EIGHT_BIT) and keys.verifies(got)


async def test_a_server_without_8bitmime_gets_a_seven_bit_form_that_verifies(keys) -> None:
    with Aio(offer_8bitmime=False) as mx:
        events = await send(mx.port, [EIGHT_BIT], keys)
    assert [e["event"] for e in events] == ["delivered"]
    ((options, got),) = mx.sink.received
    assert options == []
    assert got.isascii() and b"Content-Transfer-Encoding: quoted-printable" in got
    assert keys.verifies(got)
    assert text_of(got) == TEXT * 3


async def test_policy_downgrade_sends_seven_bits_even_where_8bitmime_is_offered(keys) -> None:
    with Aio(offer_8bitmime=True) as mx:
        await send(mx.port, [EIGHT_BIT], keys, content='eight_bit = "downgrade"')
    ((options, got),) = mx.sink.received
    assert options == [] and got.isascii() and keys.verifies(got)


@pytest.mark.parametrize("offer", [True, False])
async def test_a_long_line_arrives_reencoded_and_verifies(keys, offer: bool) -> None:
    with Aio(offer_8bitmime=offer) as mx:
        await send(mx.port, [LONG], keys)
    ((options, got),) = mx.sink.received
    assert options == []
    assert max(map(len, lines(got))) <= 998 and keys.verifies(got)
    assert text_of(got).replace("\r\n", "\n") == ("0123456789" * 150 + "\r\n").replace("\r\n", "\n")


@pytest.mark.parametrize("offer", [True, False])
async def test_the_pipelined_next_mail_declares_8bitmime_only_where_offered(keys,
                                                                            offer: bool) -> None:
    ehlo = (b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if offer
            else b"250-mx.test\r\n250 PIPELINING\r\n")
    mails: list[bytes] = []
    bodies: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.greet(reader, writer, ehlo=ehlo)
        group = [await server.line(reader) for _ in range(3)]
        mails.append(group[0])
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        bodies.append(await server.body(reader))
        # The second message's MAIL, RCPT and DATA came behind the first body, unanswered.
        group = [await asyncio.wait_for(server.line(reader), 10) for _ in range(3)]
        mails.append(group[0])
        writer.write(b"250 first stored\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        bodies.append(await server.body(reader))
        writer.write(b"250 second stored\r\n")
        assert await server.line(reader) == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with Scripted(script) as server:
        events = await send(server.port, [EIGHT_BIT, EIGHT_BIT.replace(b"dessert", b"again")],
                            keys, throttle='[[throttles]]\nsource = "*"\nmax_connections = 1')
    assert [e["event"] for e in events] == ["delivered", "delivered"]
    assert [e["response"]["text"] for e in events] == ["first stored", "second stored"]
    suffix = b" BODY=8BITMIME\r\n" if offer else b">\r\n"
    assert len(mails) == 2 and all(m.startswith(b"MAIL FROM:<") and m.endswith(suffix)
                                   for m in mails)
    for body in bodies:
        message = body[:-len(b".\r\n")]
        assert message.isascii() != offer
        assert keys.verifies(message)
