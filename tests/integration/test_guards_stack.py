"""Tenant guards on the local stack, end to end: tenant A's mail draws complaints
through the feedback loop (the local MX mails an ARF report for each `complain-`
mailbox, the FBL intake turns it into a `complaint` event), the export path counts
them, and A's complaint rate crosses the threshold (min_volume lowered to this
test's volume). A is paused through the controls table as an operator would pause
it; A's later mail waits (no attempt at the MX, nothing bounced) while tenant B's is
delivered; once the pause is lifted A's mail goes out on its first attempt."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stackrig import Running, enqueue, running_stack

from quiver.client import OutboundMessage
from quiver.controls.model import Control, Selector
from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS
from quiver.storage.dynamo import DynamoControls

pytestmark = pytest.mark.integration

DEADLINE = 180.0
# Enough to judge this test's 40 messages; a paused message is looked at every 5 s.
FRAGMENT = {"guards": {"enabled": True, "min_volume": 20},
            "controls": {"recheck": "5s"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(what: str, check: Callable[[], Any], *, running: Running) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        for process in running.stack.senders:
            assert process.poll() is None, f"sender exited with {process.returncode}"
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.5)


def mail(tenant: str, tag: str, n: int, *,
         complain: frozenset[int] = frozenset()) -> list[OutboundMessage]:
    out = []
    for i in range(n):
        local = "complain" if i in complain else "user"
        to = [f"{local}-{tenant}-{tag}-{i}@alpha.test"]
        mid = f"guard-{tenant}-{tag}-{i:03d}"
        out.append(OutboundMessage(
            id=mid, sender="bounces@news.quiver-demo.test", to=to, tenant=tenant,
            raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test", to=to,
                       subject=f"guards {mid}")))
    return out


def finals(running: Running, ids: set[str]) -> list[dict[str, Any]]:
    return [e for e in running.events() if e["id"] in ids and e["event"] in FINAL_EVENTS]


def guard_pauses(running: Running) -> list[Control]:
    store = DynamoControls(running.stack.client("dynamodb"), running.deployment.controls_table)
    return [c for c in asyncio.run(store.all()) if c.who == "adaptive"]


def status_controls(port: int) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
            controls: list[dict[str, Any]] = json.loads(r.read()).get("controls", [])
            return controls
    except OSError:
        return []


def test_a_tenant_over_the_complaint_threshold_waits_while_others_flow(
        tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", max_age="10m", start_sender=False,
                       feedback=True, policy_fragment=FRAGMENT) as running:
        port = free_port()
        running.stack.start_sender(extra=["--status-port", str(port)])
        tag = uuid.uuid4().hex[:6]
        # 40 messages each; two of A's recipients complain (5 %, over 0.3 %).
        first = mail("tenant-a", tag, 40, complain=frozenset({7, 23})) + mail("tenant-b", tag, 40)
        enqueue(running, first)
        [pause] = until("tenant A paused by its guard", lambda: guard_pauses(running),
                        running=running)
        assert pause.kind == "pause" and pause.selector == Selector(tenant="tenant-a")
        assert pause.expires_at is None  # the default: until an operator lifts it
        assert pause.reason.startswith("complaint rate ") and "over 24h ≥ 0.3 %" in pause.reason
        # The first round is all delivered (the complaints came after delivery).
        first_ids = {m.id for m in first}
        done = until("every first-round final event",
                     lambda: (f := finals(running, first_ids)) and len(f) == 80 and f,
                     running=running)
        assert {e["event"] for e in done} == {"delivered"}
        # The sender has the pause in force before the later mail is sent.
        until("the pause in force on the sender",
              lambda: any(c.get("id") == pause.id for c in status_controls(port)),
              running=running)

        later_a, later_b = mail("tenant-a", tag + "x", 10), mail("tenant-b", tag + "x", 10)
        enqueue(running, later_a + later_b)
        ids_a, ids_b = {m.id for m in later_a}, {m.id for m in later_b}
        delivered_b = until("tenant B's later mail delivered",
                            lambda: len(f := finals(running, ids_b)) == 10 and f,
                            running=running)
        assert {e["event"] for e in delivered_b} == {"delivered"}
        # A's later mail waits: no final event, no attempt the MX saw, nothing deferred.
        assert finals(running, ids_a) == []
        rcpts_a = {m.to[0] for m in later_a}
        assert running.stack.mx is not None
        assert not [r for r in running.stack.mx.rcpts() if r["rcpt"].lower() in rcpts_a]
        assert not [e for e in running.events() if e["id"] in ids_a]

        # Recorded as an adaptive change, with its rule and the rate it saw.
        [change] = until("the pause's control event", lambda: [
            e for e in running.events() if e["event"] == "control" and e["id"] == pause.id],
            running=running)
        assert (change["actor"], change["action"], change["rule"], change["tenant"]) == (
            "adaptive", "suspend", "guard-complaint-rate", "tenant-a")
        assert change["observed"] >= 0.003 and change["reason"] == pause.reason

        # Lifted by an operator, A's mail goes out, on its first attempt: waiting was
        # no attempt.
        store = DynamoControls(running.stack.client("dynamodb"),
                               running.deployment.controls_table)
        assert asyncio.run(store.remove(pause.id)) is not None
        delivered_a = until("tenant A's later mail delivered after the resume",
                            lambda: len(f := finals(running, ids_a)) == 10 and f,
                            running=running)
        assert {(e["event"], e["attempt"]) for e in delivered_a} == {("delivered", 1)}
        # The crossing still stands (same rate): no second pause was put in force.
        assert guard_pauses(running) == []
