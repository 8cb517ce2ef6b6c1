"""The suppression list end to end on the local stack: the sender process checks the
DynamoDB table on moto's server over HTTP before any SMTP, and the local MX logs every
RCPT TO it is sent, so "no attempt" is what the receiving side saw."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from stackrig import Running, enqueue

from quiver.client import OutboundMessage
from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS
from quiver.storage.base import Suppression
from quiver.storage.dynamo import DynamoSuppression

pytestmark = pytest.mark.integration
TIMEOUT = 120.0


def message(mid: str, to: list[str], *, tenant: str) -> OutboundMessage:
    return OutboundMessage(
        id=mid, sender="bounces@news.quiver-demo.test", to=to, tenant=tenant,
        raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test", to=to,
                   subject=f"suppression {mid}"))


def finals(running: Running, mid: str, count: int) -> dict[str, dict]:
    events = running.events_for({mid}, finals=count, timeout=TIMEOUT)
    out = {e["rcpt"]: e for e in events if e["event"] in FINAL_EVENTS}
    assert len(out) == count, events
    return out


def tried(running: Running, address: str) -> list[str]:
    """The replies the local MX gave to each RCPT TO of `address`."""
    assert running.stack.mx is not None
    return [r["reply"] for r in running.stack.mx.rcpts() if r["rcpt"].lower() == address]


def store(running: Running) -> DynamoSuppression:
    return DynamoSuppression(running.stack.client("dynamodb"),
                             running.deployment.suppression_table)


def test_a_listed_recipient_gets_suppressed_without_an_attempt_its_sibling_is_delivered(
        local_stack: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    listed, sibling = f"listed-{tag}@alpha.test", f"sibling-{tag}@alpha.test"
    asyncio.run(store(local_stack).put(Suppression(
        address=listed, reason="unsubscribe", created_at=time.time(), tenant="acme",
        source="e2e")))
    mid = f"supp-{tag}"
    enqueue(local_stack, [message(mid, [listed, sibling], tenant="acme")])
    outcome = finals(local_stack, mid, 2)
    assert outcome[sibling]["event"] == "delivered"
    assert outcome[listed]["event"] == "suppressed"
    assert outcome[listed]["bounce"]["category"] == "unsubscribe"
    assert "scope tenant:acme" in outcome[listed]["reason"]
    assert outcome[listed]["attempt"] == 0
    assert tried(local_stack, sibling) == ["250 2.1.5 OK"]
    assert tried(local_stack, listed) == []


def test_a_5_1_1_bounce_suppresses_the_next_message_to_that_address(
        local_stack: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    address = f"permfail-{tag}@alpha.test"
    first = f"hard-{tag}-1"
    enqueue(local_stack, [message(first, [address], tenant="acme")])
    assert finals(local_stack, first, 1)[address]["event"] == "bounced"
    # Written behind delivery: wait for the entry in the table.
    deadline = time.monotonic() + TIMEOUT
    found: dict[str, Suppression] = {}
    while time.monotonic() < deadline and not found:
        found = asyncio.run(store(local_stack).lookup([address], tenant="acme"))
        if not found:
            time.sleep(0.5)
    entry = found[address]
    assert (entry.tenant, entry.reason) == ("acme", "hard_bounce")
    assert entry.source.startswith(f"bounced {first} at ")
    assert "5.1.1" in entry.source
    second = f"hard-{tag}-2"
    enqueue(local_stack, [message(second, [address], tenant="acme")])
    outcome = finals(local_stack, second, 1)[address]
    assert outcome["event"] == "suppressed" and outcome["bounce"]["category"] == "hard_bounce"
    assert tried(local_stack, address) == ["550 5.1.1 user unknown"]  # the first only
    # Another tenant's mail to the address is not suppressed by it.
    other = f"hard-{tag}-3"
    enqueue(local_stack, [message(other, [address], tenant="other")])
    assert finals(local_stack, other, 1)[address]["event"] == "bounced"


def wait_for_entry(running: Running, address: str, *, tenant: str) -> Suppression:
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = asyncio.run(store(running).lookup([address], tenant=tenant))
        if found or time.monotonic() > deadline:
            assert found, f"no suppression entry for {address}"
            return found[address]
        time.sleep(0.5)


def test_a_5_1_1_to_the_end_of_data_for_two_recipients_suppresses_neither(
        local_stack: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    both = [f"permfail-data-{tag}-a@alpha.test", f"permfail-data-{tag}-b@alpha.test"]
    mid = f"data-{tag}"
    enqueue(local_stack, [message(mid, both, tenant="acme")])
    outcome = finals(local_stack, mid, 2)
    assert {outcome[a]["response"]["enhanced"] for a in both} == {"5.1.1"}
    # A RCPT-time 5.1.1 afterwards, from the same sender: once its entry is written,
    # the earlier bounces' would have been too (one writer, in order).
    barrier = f"permfail-{tag}@alpha.test"
    enqueue(local_stack, [message(f"data-{tag}-barrier", [barrier], tenant="acme")])
    finals(local_stack, f"data-{tag}-barrier", 1)
    wait_for_entry(local_stack, barrier, tenant="acme")
    assert asyncio.run(store(local_stack).lookup(both, tenant="acme")) == {}
