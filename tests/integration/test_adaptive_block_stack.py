"""A block reply suspends that source x provider on both of two sender processes within
10 s, on the local stack: mail flows to two domains at two providers through two
senders; one message meets an Outlook-style block (S3150) at delta.test's MX. The
sender that saw it pauses local1 x quiver-remote at once and writes the pause to the
controls table; the other picks it up at its next poll. Mail to delta.test waits (no
attempt, no bounce) while alpha.test flows, and is delivered once the suspension ends.

The latency is measured from the block reply to the last RCPT the MX saw for
delta.test (both senders' mail goes through local1, the only source of the pool)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from stackrig import enqueue, message, running_stack

from quiver.devstack.controls_drill import (
    DRILL_PROVIDERS,
    LOCAL_PROVIDERS,
    OTHER_DOMAIN,
    PAUSED_DOMAIN,
    PAUSED_PROVIDER,
    Drill,
    DrillError,
    Feeder,
)
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

PROMISED = 10.0
# Long enough to see the pause hold past the 10 s on both senders and in `quiver
# status` (each sender's record comes with its heartbeat, every 10 s), short enough
# to see it lift.
DURATION = 30.0
ADAPTIVE = f"""
[controls]
poll = "2s"
recheck = "5s"

[adaptive]
starter = false
[[adaptive.rules]]
name = "test-blocklisted"
provider = "{PAUSED_PROVIDER}"
text = "S3150"
window = "60s"
action = "suspend"
duration = "{DURATION:g}s"
"""
ONE_SOURCE = "sources = { local1 = 1 }"


def test_a_block_reply_suspends_the_source_and_provider_on_both_senders(
        tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", max_age="10m", start_sender=False) as running:
        stack = running.stack

        def edit(text: str) -> str:
            assert LOCAL_PROVIDERS in text and "sources = { local1 = 1, local2 = 1 }" in text
            return (text.replace(LOCAL_PROVIDERS, DRILL_PROVIDERS)
                    .replace("sources = { local1 = 1, local2 = 1 }", ONE_SOURCE) + ADAPTIVE)

        config = stack.policy_variant("adaptive-block", edit)
        stack.start_sender(name="sender-a", config=config)
        stack.start_sender(name="sender-b", config=config)
        feeder = Feeder(stack, interval=0.3, limit=400)
        drill = Drill(stack)
        blocked_rcpt = f"blocklisted-{uuid.uuid4().hex[:6]}@{PAUSED_DOMAIN}"
        feeder.start()
        try:
            start = drill.rcpts()[-1][1] if drill.rcpts() else 0.0
            drill.wait_until("mail to both domains",
                             lambda: drill.flowing(PAUSED_DOMAIN, after=start)
                             and drill.flowing(OTHER_DOMAIN, after=start))
            enqueue(running, [message(0, [blocked_rcpt], prefix="adaptive-block")])

            def block_at() -> float | None:
                return next((datetime_of(r) for r in stack.mx.rcpts()
                             if r["rcpt"] == blocked_rcpt), None) if stack.mx else None

            drill.wait_until("the block reply", lambda: block_at() is not None)
            blocked = block_at()
            assert blocked is not None
            # alpha.test keeps flowing past the promise: the proof both senders are
            # alive and only delta.test's provider is held.
            drill.wait_until(f"mail to {OTHER_DOMAIN} after the window",
                             lambda: drill.flowing(OTHER_DOMAIN, after=blocked + PROMISED + 2))
            to_paused = [at for d, at in drill.rcpts() if d == PAUSED_DOMAIN and at > blocked]
            held_until = blocked + DURATION - 1  # the pause's end, less clock slack
            during = [at for at in to_paused if at < held_until]
            latency = max(during, default=blocked) - blocked
            print(f"adaptive suspension in force on both senders {latency:.2f}s after the "
                  "block reply")
            assert latency <= PROMISED, (latency, during)

            def status_shows_it() -> bool:
                done = subprocess.run([sys.executable, "-m", "quiver", "status"],
                                      env={**os.environ, **stack.env()}, capture_output=True,
                                      text=True, timeout=60)
                return done.returncode == 0 and any(
                    line.startswith("adaptive suspension: source=local1 provider="
                                    f"{PAUSED_PROVIDER} until ")
                    for line in done.stdout.splitlines())

            drill.wait_until("the suspension in `quiver status`", status_shows_it,
                             timeout=max(1.0, blocked + DURATION - 2 - time.time()))
            drill.wait_until(f"mail to {PAUSED_DOMAIN} after the suspension",
                             lambda: drill.flowing(PAUSED_DOMAIN, after=blocked + DURATION),
                             timeout=DURATION + 60)
        except DrillError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(drill.log)) from None
        finally:
            sent = feeder.stop() + 1
        feeder.check()

        drill.wait_until("every message's final event",
                         lambda: running.tally.finals >= sent, timeout=180)
        events = running.events()
        finals = [e for e in events if e["event"] in FINAL_EVENTS]
        # Mail waited; nothing bounced, nothing lost.
        assert Counter(e["event"] for e in finals) == {"delivered": sent}
        deferred = [e for e in events if e["event"] == "deferred"]
        assert [e["rcpt"] for e in deferred] == [blocked_rcpt]  # the one real attempt
        suspensions = [e for e in events if e["event"] == "control"
                       and e["actor"] == "adaptive"]
        assert [(e["action"], e["rule"], e["selector"]) for e in suspensions] == [
            ("suspend", "test-blocklisted", {"source": "local1", "provider": PAUSED_PROVIDER})]
        assert suspensions[0]["until"] is not None

        # `quiver trace` of the blocked recipient names the suspension beside its events.
        traced = subprocess.run([sys.executable, "-m", "quiver", "trace", blocked_rcpt,
                                 "--json"], env={**os.environ, **stack.env()},
                                capture_output=True, text=True, timeout=120)
        assert traced.returncode == 0, traced.stderr
        shown = json.loads(traced.stdout)["events"]
        assert [e["event"] for e in shown if e.get("rcpt")][-1] == "delivered"
        assert [(e["event"], e.get("actor"), e.get("rule")) for e in shown
                if not e.get("rcpt")] == [("control", "adaptive", "test-blocklisted")]


def datetime_of(record: dict) -> float:
    from datetime import datetime
    return datetime.fromisoformat(record["at"]).timestamp()
