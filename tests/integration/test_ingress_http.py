"""The HTTP ingress on loopback, over moto's server: replay enqueues once, a tenant
cannot send as another's domain, gzip bodies, a 500-message batch with invalid
entries gets a result per message, and what lands on the queue is the contract's."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from ingress_rig import IngressRig, batch, ingress_rig, raw_message

from quiver.ingress_http.service import gzip_body

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngressRig]:
    with ingress_rig(tmp_path_factory.mktemp("ingress-http")) as rig:
        yield rig


@pytest.fixture(autouse=True)
def empty_queue(rig: IngressRig) -> None:
    rig.drain_queue()


def test_a_replayed_id_returns_the_first_result_and_enqueues_once(rig: IngressRig) -> None:
    message = {"id": "order-1", "from": "news@mail.acme.test", "to": ["a@alpha.test"],
               "raw": raw_message("news@acme.test"), "campaign": "c1", "meta": {"k": "v"}}
    status, first = rig.post(batch(message))
    assert status == 200 and first["accepted"] == 1, first
    (result,) = first["results"]
    assert result["status"] == "accepted" and result["id"] == "order-1"
    for _ in range(3):
        status, again = rig.post(batch(message))
        assert status == 200
        (replayed,) = again["results"]
        assert replayed["queue_id"] == result["queue_id"] and replayed["replayed"] is True
    (queued,) = rig.drain_queue()
    assert queued["id"] == "acme:order-1" and queued["tenant"] == "acme"
    assert queued["campaign"] == "c1" and queued["meta"] == {"k": "v"}
    # The same id for another message is refused, not silently answered.
    status, other = rig.post(batch({**message, "to": ["b@alpha.test"]}))
    assert other["results"][0]["rule"] == "idempotency.mismatch"
    # Another tenant's same id is its own message.
    status, shop = rig.post(batch({**message, "from": "x@shop.test",
                                   "raw": raw_message("x@shop.test")}), tenant="shop")
    assert shop["accepted"] == 1, shop
    assert [m["id"] for m in rig.drain_queue()] == ["shop:order-1"]


@pytest.mark.parametrize(("sender", "header_from", "field"), [
    ("x@shop.test", "x@acme.test", "from"),
    ("x@acme.test", "x@shop.test", "raw"),
    ("x@sub.shop.test", "x@acme.test", "from"),
])
def test_a_tenant_key_cannot_send_as_another_tenants_domain(
        rig: IngressRig, sender: str, header_from: str, field: str) -> None:
    status, body = rig.post(batch({"id": f"x-{field}-{sender}", "from": sender,
                                   "to": ["a@alpha.test"], "raw": raw_message(header_from)}))
    assert status == 200 and body["accepted"] == 0
    (result,) = body["results"]
    assert (result["field"], result["rule"]) == (field, "tenant.domains")
    assert "not a verified sending domain of tenant 'acme'" in result["reason"]
    # Naming the other tenant in the message does not help either.
    status, body = rig.post(batch({"id": "y", "from": "x@acme.test", "to": ["a@alpha.test"],
                                   "raw": raw_message("x@acme.test"), "tenant": "shop"}))
    assert body["results"][0]["rule"] == "tenant.mismatch"
    assert rig.drain_queue() == []


def test_a_gzip_body_is_read_and_a_composed_message_rendered(rig: IngressRig) -> None:
    message = {"id": "gz-1", "from": "a@acme.test", "to": ["b@alpha.test"],
               "subject": "Grüße", "text": "héllo\n", "html": "<p>héllo</p>",
               "headers": {"X-Campaign-Ref": "r1"}}
    status, body = rig.post(gzip_body(batch(message)), headers={"Content-Encoding": "gzip"})
    assert status == 200 and body["accepted"] == 1, body
    (queued,) = rig.drain_queue()
    raw = base64.b64decode(queued["raw"])
    assert b"\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in raw
    assert b"X-Campaign-Ref: r1\r\n" in raw and b"multipart/alternative" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    status, body = rig.post(b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400
    status, body = rig.post(batch(message), headers={"Content-Encoding": "br"})
    assert status == 415


def test_a_500_message_batch_with_invalid_entries_gets_a_result_per_message(
        rig: IngressRig) -> None:
    messages = []
    for i in range(500):
        m = {"id": f"bulk-{i}", "from": "a@acme.test", "to": [f"u{i}@alpha.test"],
             "raw": raw_message("a@acme.test")}
        if i % 50 == 7:
            m["to"] = ["not an address"]
        elif i % 50 == 13:
            m["from"] = "a@shop.test"
        elif i % 50 == 29:
            m["raw"] = "!!!!"
        elif i % 50 == 31:
            m["subject"] = "both raw and subject"
        messages.append(m)
    status, body = rig.post(batch(*messages))
    assert status == 200
    results = body["results"]
    assert [r["index"] for r in results] == list(range(500))
    refused = {r["index"]: (r["field"], r["rule"]) for r in results if r["status"] == "refused"}
    assert body["refused"] == len(refused) == 40 and body["accepted"] == 460
    assert refused[7] == ("to[0]", "envelope")
    assert refused[13] == ("from", "tenant.domains")
    assert refused[29] == ("raw", "schema.pattern")
    assert refused[31] == ("raw", "schema.oneOf")
    queued = rig.drain_queue()
    assert sorted(m["id"] for m in queued) == sorted(
        f"acme:bulk-{i}" for i in range(500) if i not in refused)
    status, body = rig.post(batch(*(messages + messages[:1])))
    assert status == 400 and "messages" in body["reason"]


def test_requests_that_are_not_batches_are_refused_whole(rig: IngressRig) -> None:
    assert rig.post(b"{}", key="qk_nope")[0] == 401
    assert rig.post(b"not json")[0] == 400
    assert rig.post(json.dumps({"messages": []}).encode())[0] == 400
    status, body = rig.post(b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415 and body["error"] == "unsupported_media_type"
