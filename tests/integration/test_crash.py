"""kill -9 the sender at random moments: nothing is lost, final events stay exactly-once,
and duplicate deliveries stay within the messages in flight at each kill."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from stackrig import Running, enqueue, message, running_stack

from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration
ROUNDS = 3
MESSAGES = 1000


def short_visibility(text: str) -> str:
    # Killed messages come back after the visibility timeout: keep it at SQS's
    # practical minimum for the test so the rounds finish quickly.
    return text.replace('visibility_timeout = "60s"', 'visibility_timeout = "30s"')


def test_kill_dash_nine_loses_nothing_and_keeps_final_events_exactly_once(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rng = random.Random(20261126)
    with running_stack(tmp_path_factory.mktemp("crash"), max_age="10m",
                       start_sender=False) as stack:
        config = stack.stack.policy_variant("crash", short_visibility)
        msgs = [message(i, [f"user-k{i}@{d}" for d in
                            (("alpha.test", "delta.test") if i % 5 == 0 else ("bravo.test",))],
                        prefix="crash") for i in range(MESSAGES)]
        enqueue(stack, msgs)
        recipients = sum(len(m.to) for m in msgs)
        in_flight_at_kills = []
        sender = stack.stack.start_sender(name="crash0", config=config)
        for n in range(ROUNDS):
            time.sleep(rng.uniform(1.0, 4.0))
            in_flight_at_kills.append(_in_flight(stack))
            sender.kill()  # SIGKILL: no drain, no cleanup
            sender.wait()
            stack.stack.stop_sender(sender)
            sender = stack.stack.start_sender(name=f"crash{n + 1}", config=config)
        try:
            events = stack.events_for({m.id for m in msgs}, finals=recipients, timeout=240)
        finally:
            stack.stack.stop_sender(sender)
        received = stack.stack.mx.received()

    finals = Counter((e["id"], e["rcpt"]) for e in events if e["event"] in FINAL_EVENTS)
    expected = {(m.id, r) for m in msgs for r in m.to}
    assert set(finals) == expected, f"missing: {len(expected - set(finals))}"
    assert set(finals.values()) == {1}, "a recipient has two final events"
    assert all(e["event"] == "delivered" for e in events if e["event"] in FINAL_EVENTS)
    copies = Counter(r for item in received for r in item["rcpt_tos"]
                     if r.startswith("user-k"))
    wanted = {r for _, r in expected}
    assert wanted <= set(copies), "a recipient was never delivered"
    duplicates = sum(n - 1 for n in copies.values())
    print(f"in flight at the kills: {in_flight_at_kills}; duplicate deliveries: {duplicates}")
    assert duplicates <= sum(in_flight_at_kills)


def _in_flight(stack: Running) -> int:
    return stack.queue_counts()[1]
