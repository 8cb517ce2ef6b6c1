"""IP warm-up on the local stack: pool `shared` holds one warming source (local1, day 1
of the standard template: a cap of 50 for a provider the template does not name) and
one warm source (local2). Two sender processes share the cap through the controls
table; 500 single-recipient messages go out. The warming source carries exactly its
cap, the warm one the rest, every message is delivered on its first attempt and none
is deferred: nothing waits for the cap."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from stackrig import enqueue, message, running_stack

from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration

MESSAGES = 500
DAY_ONE_CAP = 50  # the standard template's default cap on day 1


def test_a_warming_source_carries_exactly_its_cap_and_the_pool_the_rest(tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", max_age="10m", start_sender=False) as running:
        stack = running.stack
        today = dt.datetime.now(dt.UTC).date()
        config = stack.policy_variant("warmup", lambda text: text + (
            f'\n[warmup.local1]\ntemplate = "standard"\nstart = "{today}"\n'))
        stack.start_sender(name="sender-a", config=config)
        stack.start_sender(name="sender-b", config=config)
        messages = [message(i, [f"user{i}@alpha.test"], prefix="warmup")
                    for i in range(MESSAGES)]
        enqueue(running, messages)
        ids = {m.id for m in messages}
        events = running.events_for(ids, finals=MESSAGES, timeout=240)
        finals = [e for e in events if e["event"] in FINAL_EVENTS]
        assert Counter(e["event"] for e in finals) == {"delivered": MESSAGES}, \
            Counter(e["event"] for e in finals)
        assert len({e["id"] for e in finals}) == MESSAGES
        assert not [e for e in events if e["event"] == "deferred"]
        assert {e["attempt"] for e in finals} == {1}
        by_source = Counter(e["source"] for e in finals)
        assert by_source == {"local1": DAY_ONE_CAP, "local2": MESSAGES - DAY_ONE_CAP}
        # The shared count agrees: the cap was taken whole, and only once.
        table = stack.client("dynamodb").get_item(
            TableName=running.deployment.controls_table, ConsistentRead=True,
            Key={"pk": {"S": "warmup"}, "sk": {"S": f"local1|quiver-local|{today}"}})
        assert table["Item"]["taken"]["N"] == str(DAY_ONE_CAP)
        # The operator's view: `quiver status` shows the source's day and its used-up cap.
        status = subprocess.run([sys.executable, "-m", "quiver", "status"],
                                env={**os.environ, **stack.env()}, capture_output=True,
                                text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        assert (f"  local1: day 1 standard: quiver-local {DAY_ONE_CAP}/{DAY_ONE_CAP} "
                "(used up)") in status.stdout.splitlines(), status.stdout
