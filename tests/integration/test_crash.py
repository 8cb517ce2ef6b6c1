"""kill -9 the sender while it works: nothing is lost, final events stay exactly-once,
and duplicate deliveries stay within the messages in flight at the kills."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter, defaultdict

import pytest
from stackrig import Running, enqueue, message, running_stack

from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration
ROUNDS = 3
PER_ROUND = 300  # messages enqueued for each sender that gets killed
RATE = "25/s"  # per source (three of them): a round of 360 recipients takes about 5 s


def crash_policy(text: str) -> str:
    # Killed messages come back after the visibility timeout: keep it at SQS's
    # practical minimum for the test so the rounds finish quickly.
    text = text.replace('visibility_timeout = "60s"', 'visibility_timeout = "30s"')
    # Paced, so a round takes seconds and the kill lands mid-stream however late this
    # process (on a busy machine) sees the deliveries it waits for: unpaced, a sender
    # can finish its whole round between the last look at the MX and the kill.
    paced = text.replace('source = "*"\nmax_connections = 20\n',
                         f'source = "*"\nmax_connections = 20\nmax_rate = "{RATE}"\n')
    assert paced != text, "the stack's catch-all throttle moved: pace the crash policy anew"
    return paced


def test_kill_dash_nine_loses_nothing_and_keeps_final_events_exactly_once(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rng = random.Random(20261126)
    with running_stack(tmp_path_factory.mktemp("crash"), max_age="10m",
                       start_sender=False) as stack:
        config = stack.stack.policy_variant("crash", crash_policy)
        msgs = []
        # Per kill: messages left invisible on the queue once the sender is dead (its own
        # and any earlier kill's not yet visible again), and the part that was its own.
        stranded, held = [], []
        for n in range(ROUNDS):
            # Each sender gets fresh mail: a sender killed earlier holds its messages
            # invisible for the visibility timeout, so without it the next would idle.
            batch = [message(i, [f"user-k{i}@{d}" for d in
                                 (("alpha.test", "delta.test") if i % 5 == 0
                                  else ("bravo.test",))], prefix="crash")
                     for i in range(n * PER_ROUND, (n + 1) * PER_ROUND)]
            enqueue(stack, batch)
            msgs += batch
            before = _in_flight(stack)  # no sender runs: this cannot change under us
            sender = stack.stack.start_sender(name=f"crash{n}", config=config)
            # Killed mid-stream: once the MX has a random part of this round's mail.
            _wait_for_deliveries(stack, {r for m in batch for r in m.to},
                                 count=rng.randint(20, 150), sender=sender)
            sender.kill()  # SIGKILL: no drain, no cleanup
            sender.wait()
            stack.stack.stop_sender(sender)
            # Sampled after the kill, from the queue: a dead sender changes nothing more.
            stranded.append(_in_flight(stack))
            held.append(stranded[-1] - before)
        sender = stack.stack.start_sender(name="crash-final", config=config)
        recipients = sum(len(m.to) for m in msgs)
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
    # A message sent again after a kill repeats the recipients it had delivered: count
    # the extra sends of each message, each needing the message in flight at a kill.
    message_of = {r: mid for mid, r in expected}
    extra_sends: dict[str, int] = defaultdict(int)
    for rcpt, n in copies.items():
        extra_sends[message_of[rcpt]] = max(extra_sends[message_of[rcpt]], n - 1)
    duplicates = sum(n - 1 for n in copies.values())
    print(f"in flight at the kills: {held} held by the killed sender, {stranded} invisible "
          f"in all; duplicate deliveries: {duplicates} recipients, "
          f"{sum(extra_sends.values())} messages sent again")
    # Every kill interrupted work in flight: it did not kill an idle sender.
    assert all(n > 0 for n in held), held
    assert sum(extra_sends.values()) <= sum(stranded)


def _in_flight(stack: Running) -> int:
    return stack.queue_counts()[1]


def _wait_for_deliveries(stack: Running, recipients: set[str], *, count: int,
                         sender: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until the MX has delivered `count` of `recipients` (the sender must stay up)."""
    deadline = time.monotonic() + timeout
    while True:
        got = sum(1 for record in stack.stack.mx.received()
                  for rcpt in record["rcpt_tos"] if rcpt in recipients)
        if got >= count:
            return
        assert sender.poll() is None, "the sender exited before it was killed"
        assert time.monotonic() < deadline, f"only {got} of {count} deliveries in {timeout} s"
        time.sleep(0.05)
