"""What attempt events say about the message sent: its size as sent, the DKIM signer's
domain and selector, its Message-ID header, and the SMTP transaction's time; each a
field of the schema (quiver.event_schema) of the type its column reads."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_lifecycle import PATH, POLICY

from quiver.bounce import default_classifier
from quiver.delivery import Attempt
from quiver.dkim import DkimSigner, SignerSet, generate_private_key
from quiver.event_schema import record_problems
from quiver.message import MAX_MESSAGE_ID, message_id
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.smtp.reply import parse_reply
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

MESSAGE = (b"From: News <news@example.com>\r\nTo: x@example.org\r\n"
           b"Message-ID:\r\n <m-1.20261203@news.example.com>\r\nSubject: hi\r\n\r\nbody\r\n")
REPLIES = {"ok": (250, "2.0.0 ok"), "temp": (451, "4.3.0 try later"),
           "perm": (550, "5.1.1 user unknown"), "conn": (421, "4.4.1 no route")}


class Transport:
    """A transaction for ok/temp/perm (sized 7 bytes more than handed over, as a 7-bit
    re-encoding would be, and timed 42 ms); `conn`: the connection opened for it
    failed, so it was tried, but no transaction took place."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Any = None) -> list[Attempt]:
        self.messages.append(message)
        out = []
        for r in recipients:
            kind = r.split("@")[0]
            ran = kind != "conn"
            out.append(Attempt(rcpt=r, reply=parse_reply(*REPLIES[kind]), path=PATH,
                               counts=True, size=len(message) + 7 if ran else None,
                               transaction_ms=42 if ran else None))
        return out


async def _events(signers: SignerSet, to: list[str], raw: bytes = MESSAGE
                  ) -> tuple[list[dict[str, Any]], list[bytes]]:
    queue, dlq, sink = MemoryQueue("outbound"), MemoryQueue("dlq"), MemoryEventSink()
    completer = Completer(queue=queue, dlq=dlq, sink=sink, max_delay=0.01)
    transport = Transport()
    handler = MessageHandler(policy=POLICY, transport=transport, signers=signers,
                             bodies=MemoryBodyStore("spill"), completer=completer,
                             classifier=default_classifier(), rng=random.Random(1))
    await queue.send([Outgoing(body=json.dumps({
        "v": 1, "id": "m-1", "from": "bounce@example.com", "to": to,
        "raw": base64.b64encode(raw).decode()}))])
    (received,) = await queue.receive(max_messages=1, wait_seconds=0, visibility=30)
    completer.start()
    try:
        assert await handler.handle(received)
    finally:
        await completer.close()
    return sink.records, transport.messages


async def test_attempt_events_carry_the_message_sent_and_the_transaction_time() -> None:
    signer = DkimSigner.from_pem(domain="example.com", selector="q2026",
                                 algorithm="ed25519-sha256",
                                 pem=generate_private_key("ed25519-sha256"),
                                 headers=["from", "to", "subject"])
    records, sent = await _events(SignerSet([signer]), [
        "ok@a.example", "temp@a.example", "perm@a.example", "conn@b.example"])
    by_rcpt = {r["rcpt"].split("@")[0]: r for r in records}
    assert [by_rcpt[k]["event"] for k in ("ok", "temp", "perm")] == [
        "delivered", "deferred", "bounced"]
    for kind in ("ok", "temp", "perm", "conn"):
        event = by_rcpt[kind]
        assert record_problems(event) == [], event
        assert event["dkim_domain"] == "example.com" and event["dkim_selector"] == "q2026"
        assert event["message_id_header"] == "<m-1.20261203@news.example.com>"
    # The size the transaction reports; without a transaction, the signed message's.
    assert by_rcpt["ok"]["message_size"] == len(sent[0]) + 7
    assert by_rcpt["ok"]["transaction_ms"] == 42
    assert by_rcpt["conn"]["message_size"] == len(sent[1])
    assert sent[1].startswith(b"DKIM-Signature:")
    assert by_rcpt["conn"]["event"] == "deferred" and by_rcpt["conn"]["transaction_ms"] is None


async def test_an_unsigned_message_without_a_message_id_says_so() -> None:
    raw = b"From: News <news@other.example>\r\nSubject: hi\r\n\r\nMessage-ID: <not@a.header>\r\n"
    records, sent = await _events(SignerSet([]), ["ok@a.example"], raw)
    (event,) = records
    assert (event["dkim_domain"], event["dkim_selector"], event["message_id_header"]) == (
        None, None, None)
    assert event["message_size"] == len(sent[0]) + 7 and record_problems(event) == []


def test_message_id_reads_the_header_only_unfolded() -> None:
    assert message_id(b"Subject: x\r\nmessage-id :  <a@b>  \r\n\r\n") == "<a@b>"
    assert message_id(b"Message-ID: <a@b>\n\tfolded\n\nbody") == "<a@b> folded"
    assert message_id(b"Message-ID:\r\n\r\n") is None
    assert message_id(b"X-Message-ID: <a@b>\r\n\r\n") is None
    assert message_id(b"Message-ID: <" + b"x" * 2000 + b">\r\n\r\n") == "<" + "x" * (
        MAX_MESSAGE_ID - 1)


@given(st.binary(max_size=400))
def test_message_id_never_raises_and_stays_one_bounded_line(raw: bytes) -> None:
    value = message_id(raw)
    assert value is None or (0 < len(value) <= MAX_MESSAGE_ID and "\n" not in value.strip())
