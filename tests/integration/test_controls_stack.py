"""Operator controls on the local stack, as an operator uses them: two sender
processes, mail flowing to two demo domains, and `quiver ctl` in between.

- `pause --provider quiver-remote` (delta.test's MX) stops new attempts to it on both
  senders within 10 s (from the command to the last RCPT the local MX saw for it)
  while alpha.test, at the other provider, keeps flowing; `resume` brings it back;
  the paused mail is delivered on its first attempt (waiting was never counted) and
  nothing is bounced or lost.
- `stop` halts every sender within 10 s, and a sender started during the stop (as
  autoscaling would) sends nothing; `start` resumes.
Conditions with generous deadlines; the 10 s is the bound the controls promise."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from stackrig import running_stack

from quiver.devstack.controls_drill import (
    OTHER_DOMAIN,
    PAUSED_DOMAIN,
    PAUSED_PROVIDER,
    Drill,
    DrillError,
    Feeder,
    policy_with_controls,
)
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

# What the controls promise: in force on every sender within 10 s of the command.
PROMISED = 10.0


def test_pause_resume_stop_start_across_two_senders(tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", max_age="10m", start_sender=False) as running:
        stack = running.stack
        config = policy_with_controls(stack)
        stack.start_sender(name="sender-a", config=config)
        stack.start_sender(name="sender-b", config=config)
        feeder = Feeder(stack)
        drill = Drill(stack)
        feeder.start()
        try:
            pause = drill.pause_cycle()
            stop = drill.stop_cycle(
                during=lambda: stack.start_sender(name="sender-c", config=config))
        except DrillError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(drill.log)) from None
        finally:
            sent = feeder.stop()
        feeder.check()
        assert pause["pause_effective_s"] <= PROMISED, pause
        assert stop["stop_effective_s"] <= PROMISED, stop
        assert len(stack.senders) == 3  # the one started during the stop runs too

        # Nothing bounced or lost: one final event per message, every one delivered.
        drill.wait_until("every message's final event",
                         lambda: running.tally.finals >= sent, timeout=180)
        events = running.events()
        finals = [e for e in events if e["event"] in FINAL_EVENTS]
        assert Counter(e["event"] for e in finals) == {"delivered": sent}
        assert len({(e["id"], e["rcpt"]) for e in finals}) == sent
        # Waiting in a pause or a stop is no attempt: each was delivered on its first.
        assert {e["attempt"] for e in finals} == {1}
        assert not [e for e in events if e["event"] == "deferred"]
        by_domain = Counter(e["rcpt"].rpartition("@")[2] for e in finals)
        assert by_domain[PAUSED_DOMAIN] == feeder.sent[PAUSED_DOMAIN]
        assert by_domain[OTHER_DOMAIN] == feeder.sent[OTHER_DOMAIN]
        # Each change is itself an event, with who asked and why.
        controls = sorted((e for e in events if e["event"] == "control"),
                          key=lambda e: e["at"])
        assert [e["action"] for e in controls] == ["pause", "resume", "stop", "start"]
        assert controls[0]["selector"] == {"provider": PAUSED_PROVIDER}
        assert controls[0]["reason"] == "controls drill" and controls[0]["actor"]
