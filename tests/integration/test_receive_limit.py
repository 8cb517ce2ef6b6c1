"""A message that keeps coming back unfinished ends with one `failed` final event per
recipient and its body in the outbound DLQ, one receive before SQS's maxReceiveCount.

The local stack's outbound queue gets maxReceiveCount 4 here (the CDK app's is 10), and
its senders learn it from the deployment settings as deployed ones do: they give a
message up on its third receive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackrig import Running, enqueue, message, running_stack

from quiver.devstack.servers.mx import start_mx
from quiver.devstack.stack import wait_for
from quiver.envelope import decode
from quiver.events import FINAL_EVENTS

pytestmark = pytest.mark.integration
MAX_RECEIVES = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_stack(tmp_path_factory.mktemp("limit"), max_age="10m", start_sender=False,
                       max_receives=MAX_RECEIVES) as running:
        assert running.deployment.outbound_max_receives == MAX_RECEIVES
        yield running


def finals_of(events: list[dict]) -> Counter[tuple[str, str]]:
    return Counter((e["rcpt"], e["event"]) for e in events if e["event"] in FINAL_EVENTS)


def dlq_copies(stack: Running, message_id: str) -> list[dict]:
    out = []
    for body in stack.dlq_bodies():
        env = decode(body)
        if env.id == message_id:
            out.append({"recipients": env.recipients, "raw": env.raw})
    return out


def test_a_poison_message_fails_each_recipient_and_keeps_its_body_in_the_dlq(
        stack: Running) -> None:
    """Two consumers took the message and died without finishing it: the sender that
    receives it a third time gives it up instead of trying (and dying) again."""
    rcpts = ["user-p1@alpha.test", "user-p2@delta.test"]
    msg = message(0, rcpts, prefix="poison")
    enqueue(stack, [msg])
    sqs = stack.stack.client("sqs")
    for n in (1, 2):
        got = sqs.receive_message(
            QueueUrl=stack.deployment.outbound_queue_url, MaxNumberOfMessages=1,
            WaitTimeSeconds=5, VisibilityTimeout=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"])["Messages"]
        assert [m["Attributes"]["ApproximateReceiveCount"] for m in got] == [str(n)]
    process = stack.stack.start_sender(name="poison")
    try:
        events = stack.events_for({msg.id}, finals=2, timeout=90)
    finally:
        assert stack.stack.stop_sender(process) == 0
    assert finals_of(events) == {(r, "failed"): 1 for r in rcpts}
    for e in events:
        assert e["event"] == "failed" and e["attempt"] == 0
        assert "received 3 times without completing" in e["reason"]
        assert e["sqs_message_id"] and e["response"] is None
    assert not [r for r in stack.stack.mx.received() if set(r["rcpt_tos"]) & set(rcpts)]
    assert dlq_copies(stack, msg.id) == [{"recipients": tuple(rcpts), "raw": msg.raw}]
    assert wait_for(lambda: stack.queue_counts() == (0, 0), timeout=30)


def test_a_message_in_flight_at_repeated_kill_dash_nine_ends_failed(
        stack: Running, tmp_path: Path) -> None:
    """kill -9 while the message is in its SMTP transaction, twice (an MX that takes two
    minutes per reply keeps it there): the third receive gives it up."""
    assert stack.stack.mx is not None
    mx = start_mx(host="127.0.0.70", port=stack.stack.mx.address[1], store_dir=tmp_path / "mx",
                  tarpit_seconds=120)
    config = stack.stack.policy_variant("killed", lambda text: text.replace(
        'visibility_timeout = "60s"', 'visibility_timeout = "30s"').replace(
        'command_timeout = "30s"\n',
        'command_timeout = "30s"\nroutes = { "slow.test" = "127.0.0.70" }\n')
        # The tarpit MX offers no STARTTLS, and the stack's default mode is verify.
        + '\n[[tls.rules]]\ndomain = "slow.test"\nmode = "opportunistic"\n')
    rcpt = "tarpit-k@slow.test"
    msg = message(0, [rcpt], prefix="killed")
    try:
        enqueue(stack, [msg])
        for kill in (1, 2):
            process = stack.stack.start_sender(name=f"killed{kill}", config=config)
            # In its transaction: connected to the MX, waiting for the RCPT reply.
            assert wait_for(lambda n=kill: mx.stats()["connections"] == n
                            and mx.stats()["current"] == 1, timeout=90)
            process.kill()  # SIGKILL: no drain, the message stays invisible until it lapses
            process.wait()
            stack.stack.stop_sender(process)
        process = stack.stack.start_sender(name="killed3", config=config)
        try:
            events = stack.events_for({msg.id}, finals=1, timeout=120)
        finally:
            assert stack.stack.stop_sender(process) == 0
        tries = mx.stats()["connections"]
    finally:
        mx.stop()
    assert finals_of(events) == {(rcpt, "failed"): 1}
    assert tries == 2  # given up on receipt, not tried a third time
    assert [e["event"] for e in events] == ["failed"]
    assert mx.received() == []
    assert dlq_copies(stack, msg.id) == [{"recipients": (rcpt,), "raw": msg.raw}]
