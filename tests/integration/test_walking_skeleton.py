"""End to end on the embedded local stack: SQS (moto server) → sender → DNS → MX → S3 events."""

from __future__ import annotations

import json
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import dkim
import dns.resolver
import pytest

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

DELIVERY_FIELDS = ("source", "source_ip", "mx", "mx_ip", "site", "response", "tls", "queued_ms")


def client_for(running) -> QuiverClient:
    return QuiverClient(sqs=running.stack.client("sqs"), s3=running.stack.client("s3"),
                        queue_url=running.deployment.outbound_queue_url,
                        spill_bucket=running.deployment.spill_bucket)


def dkim_dns(running):
    """DKIM key lookups answered by the local DNS server, over the DNS protocol."""
    resolver = dns.resolver.Resolver(configure=False)
    host, port = running.stack.dns.address
    resolver.nameservers = [host]
    resolver.port = port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


def received_by_message_id(running) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in running.stack.mx.received():
        raw = Path(item["file"]).read_bytes()
        mid = message_from_bytes(raw)["Message-ID"].strip("<>").split("@")[0]
        out.setdefault(mid, []).append({**item, "raw": raw})
    return out


def test_200_messages_each_recipient_one_final_event_and_signed_delivery(local_stack) -> None:
    domains = ["alpha.test", "bravo.test", "delta.test", "nomx.test", "nullmx.test"]
    messages = []
    for i in range(200):
        domain = domains[i % len(domains)]
        to = [f"user{i}@{domain}"]
        if i % 7 == 0:
            to.append(f"permfail-{i}@alpha.test")
        from_domain = "news.quiver-demo.test" if i % 2 else "alerts.quiver-demo.test"
        mid = f"skel-{i:04d}"
        messages.append(OutboundMessage(
            id=mid, sender=f"bounces@{from_domain}", to=to, campaign="skeleton",
            meta={"i": i},
            raw=render(message_id=mid, from_addr=f"hello@{from_domain}", to=to, subject=f"m{i}"),
        ))
    result = client_for(local_stack).enqueue_batch(messages)
    assert not result.failed and len(result.accepted) == 200
    ids = {m.id for m in messages}
    recipients = sum(len(m.to) for m in messages)
    events = local_stack.events_for(ids, finals=recipients, timeout=120)

    finals = [e for e in events if e["event"] in FINAL_EVENTS]
    per_rcpt = Counter((e["id"], e["rcpt"]) for e in finals)
    assert len(per_rcpt) == recipients and set(per_rcpt.values()) == {1}
    for e in finals:
        assert e["v"] == 1 and e["at"].endswith("Z") and e["campaign"] == "skeleton"
        # meta as the table types it: a number as its JSON text (docs/events.md).
        assert e["meta"]["i"] == str(int(e["id"].split("-")[1]))
        assert e["from"].startswith("bounces@") and e["attempt"] == 1
    kinds = Counter((e["rcpt"].split("@")[1], e["event"]) for e in finals)
    assert kinds[("nullmx.test", "bounced")] == 40
    assert kinds[("alpha.test", "bounced")] == len([m for m in messages if len(m.to) == 2])
    delivered = [e for e in finals if e["event"] == "delivered"]
    assert len(delivered) == 160
    for e in delivered:
        for key in DELIVERY_FIELDS:
            assert e.get(key) is not None, (key, e)
        assert e["response"]["code"] == 250 and e["tls"].startswith("TLS")
        # Domains whose MX matches a provider pattern are attributed to it.
        expected = None if e["rcpt"].endswith("@nomx.test") else "quiver-local"
        assert "provider" in e and e["provider"] == expected
        assert e["source_ip"] in ("127.0.0.2", "127.0.0.3")
    nullmx = next(e for e in finals if e["rcpt"].endswith("@nullmx.test"))
    assert nullmx["response"]["enhanced"] == "5.1.10"
    assert nullmx["bounce"]["kind"] == "hard"

    # The MX got each delivered message exactly once, DKIM-signed, from the egress IPs.
    got = received_by_message_id(local_stack)
    lookup = dkim_dns(local_stack)
    for e in delivered:
        copies = [c for c in got.get(e["id"], []) if e["rcpt"] in c["rcpt_tos"]]
        assert len(copies) == 1, e["id"]
        assert copies[0]["peer_ip"] == e["source_ip"]
    for mid in sorted({e["id"] for e in delivered})[:40]:
        raw = got[mid][0]["raw"]
        assert raw.startswith(b"DKIM-Signature:")
        assert dkim.verify(raw, dnsfunc=lookup), mid


def test_large_body_travels_through_s3(local_stack) -> None:
    big = render(message_id="skel-big", from_addr="hello@news.quiver-demo.test",
                 to=["big@alpha.test"], subject="big", size=600_000)
    client = client_for(local_stack)
    body = client.build(OutboundMessage(id="skel-big", sender="b@news.quiver-demo.test",
                                        to=["big@alpha.test"], raw=big))
    assert '"raw_s3":"s3://' in body and '"raw"' not in body
    client.enqueue(OutboundMessage(id="skel-big", sender="b@news.quiver-demo.test",
                                   to=["big@alpha.test"], raw=big))
    events = local_stack.events_for({"skel-big"}, finals=1, timeout=60)
    assert [e["event"] for e in events] == ["delivered"]
    copies = received_by_message_id(local_stack)["skel-big"]
    assert len(copies) == 1
    assert copies[0]["raw"].endswith(big.split(b"\r\n\r\n", 1)[1])


def test_bad_queue_messages_are_rejected_kept_in_dlq_and_sender_keeps_running(
        local_stack) -> None:
    sqs = local_stack.stack.client("sqs")
    url = local_stack.deployment.outbound_queue_url
    not_json = '{"v":1,"id":"skel-notjson",'
    crlf = json.dumps({"v": 1, "id": "skel-crlf", "from": "a@news.quiver-demo.test",
                       "to": ["victim@alpha.test\r\nRCPT TO:<evil@alpha.test>"], "raw": "SGk="})
    before = len(local_stack.stack.mx.received())
    for body in (not_json, crlf):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    # The undecodable one has no id of its own: its event carries the SQS message id.
    import time

    deadline = time.monotonic() + 60
    rejected: list[dict] = []
    while time.monotonic() < deadline and len(rejected) < 2:
        rejected = [e for e in local_stack.events() if e["event"] == "rejected"
                    and ("not valid JSON" in e["reason"] or "to[0]" in e["reason"])]
        time.sleep(0.5)
    reasons = sorted(e["reason"] for e in rejected)
    assert any(r.startswith("body: not valid JSON") for r in reasons), reasons
    assert any(r.startswith("to[0]: invalid address: contains a control character")
               for r in reasons), reasons
    dlq = local_stack.dlq_bodies()
    assert not_json in dlq and crlf in dlq  # untouched
    assert len(local_stack.stack.mx.received()) == before  # nothing was sent
    assert local_stack.sender.poll() is None  # and the sender is still running
    # ...and still delivering.
    client_for(local_stack).enqueue(OutboundMessage(
        id="skel-after", sender="b@news.quiver-demo.test", to=["after@bravo.test"],
        raw=render(message_id="skel-after", from_addr="hello@news.quiver-demo.test",
                   to=["after@bravo.test"], subject="after")))
    events = local_stack.events_for({"skel-after"}, finals=1, timeout=60)
    assert [e["event"] for e in events] == ["delivered"]
