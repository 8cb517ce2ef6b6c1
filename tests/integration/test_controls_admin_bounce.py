"""`quiver ctl bounce --campaign`: every queued recipient of the campaign (mail waiting
in the queue for its next attempt) and every newly received one gets exactly one
`bounced` final event with the admin reason, without an SMTP attempt; another
campaign's mail is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from stackrig import enqueue, running_stack

from quiver.client import OutboundMessage
from quiver.devstack.samples import render
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

WAIT = 180.0


def campaign_message(mid: str, rcpt: str, campaign: str) -> OutboundMessage:
    return OutboundMessage(
        id=mid, sender="bounces@news.quiver-demo.test", to=[rcpt], campaign=campaign,
        raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test", to=[rcpt],
                   subject=f"{campaign} {mid}"))


def test_an_admin_bounce_ends_every_queued_and_new_recipient_of_a_campaign(
        tmp_path: Path) -> None:
    # A long max_age: the always-deferred mail stays queued for the whole test.
    with running_stack(tmp_path / "stack", max_age="30m") as running:
        # Deferred at every attempt (451 at RCPT): queued between attempts.
        queued = [campaign_message(f"bad-{i}", f"tempfail-bad{i}@alpha.test", "bad-list")
                  for i in range(6)]
        spared = [campaign_message(f"ok-{i}", f"tempfail-ok{i}@alpha.test", "good-list")
                  for i in range(3)]
        enqueue(running, queued + spared)
        queued_ids = {m.id for m in queued}
        deadline = time.monotonic() + WAIT
        while {e["id"] for e in running.events() if e["event"] == "deferred"} < (
                queued_ids | {m.id for m in spared}):
            assert time.monotonic() < deadline, "no deferral for every message"
            time.sleep(0.5)

        done = subprocess.run(
            [sys.executable, "-m", "quiver", "ctl", "bounce", "--campaign", "bad-list",
             "--reason", "list bought from a vendor"],
            env={**os.environ, **running.stack.env()}, capture_output=True, text=True,
            timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        issued = time.time()
        # The control is in force once the sender bounces queued mail with it (a
        # sender reads the controls every `[controls] poll`, within 10 s).
        while not any(e["event"] == "bounced" for e in running.events()
                      if e["id"] in queued_ids):
            assert time.monotonic() < deadline + WAIT, "no admin bounce of queued mail"
            time.sleep(0.5)
        # Newly received mail of the campaign, to a mailbox that would accept it.
        fresh = [campaign_message(f"new-{i}", f"fresh{i}@bravo.test", "bad-list")
                 for i in range(4)]
        enqueue(running, fresh)

        ids = queued_ids | {m.id for m in fresh}
        events = running.events_for(ids, finals=len(ids), timeout=WAIT)
        finals = [e for e in events if e["event"] in FINAL_EVENTS]
        assert sorted(e["id"] for e in finals) == sorted(ids)  # exactly one each
        for e in finals:
            assert e["event"] == "bounced", e
            assert e["reason"].startswith("admin bounce: list bought from a vendor"), e
        # No SMTP attempt for the new mail: the MX never saw those recipients.
        assert running.stack.mx is not None
        seen = {r["rcpt"].lower() for r in running.stack.mx.rcpts()}
        assert not seen & {m.to[0] for m in fresh}
        # The other campaign's mail, attempted again after the control, is deferred
        # again, never bounced.
        spared_ids = {m.id for m in spared}

        def deferred_after_the_bounce() -> set[str]:
            return {e["id"] for e in running.events() if e["id"] in spared_ids
                    and e["event"] == "deferred" and epoch(e["at"]) > issued}

        while deferred_after_the_bounce() != spared_ids:
            assert time.monotonic() < deadline + WAIT, "the other campaign stalled"
            time.sleep(0.5)
        other = [e for e in running.events() if e["id"] in spared_ids]
        assert all(e["event"] == "deferred" for e in other), other


def epoch(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
