"""Operator controls in a message's life and in the scheduler: a paused recipient goes
back to the queue with no attempt counted and no event; one held past its deadline
expires naming the pause; an admin bounce gives `bounced` with the admin reason and
no SMTP; a stop holds everything; a recipient the scheduler holds (a routed pause)
is re-enqueued the same way, and a new pause releases the jobs already queued.
In-memory stores, a scripted transport, a fake clock."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable, Sequence

from quiver.bounce import default_classifier
from quiver.controls.active import ActiveControls
from quiver.controls.model import Control, Selector
from quiver.delivery import Attempt, Hold, Path
from quiver.dkim import SignerSet
from quiver.envelope import decode
from quiver.events import FINAL_EVENTS
from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.routing.mx import MxHost, Route
from quiver.routing.sources import SourcePicker
from quiver.scheduler.ready import Job
from quiver.scheduler.scheduler import Scheduler
from quiver.sender.complete import Completer
from quiver.sender.lifecycle import MessageHandler
from quiver.smtp.reply import local_reply, parse_reply
from quiver.storage.base import Outgoing
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

T0 = 1_790_000_000.0
POLICY = """
local_only = true
default_pool = "p"
[delivery]
allow_networks = ["127.0.0.0/8"]
[sources.s1]
ip = "127.0.0.2"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[retry]
first = "5m"
max_age = "1h"
[controls]
recheck = "2m"
"""
PATH = Path(source="s1", source_ip="127.0.0.2", mx="mx.example.org", mx_ip="127.0.0.1",
            site="mx.example.org", provider=None, tls="TLSv1.3")
MESSAGE = b"From: News <news@example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
WHO = "arn:aws:iam::123456789012:user/ops"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Transport:
    """Delivers everything (250), or holds it as the scheduler would under `hold`;
    records every recipient handed to it."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.hold: Hold | None = None

    async def deliver(self, *, pool: str, domain: str, sender: str, recipients: Sequence[str],
                      message: bytes, seven_bit: Callable[[], Awaitable[bytes]] | None = None
                      ) -> list[Attempt]:
        if self.hold is not None:
            reply = local_reply(451, "4.3.2", self.hold.why)
            return [Attempt(rcpt=r, reply=reply, path=PATH, counts=False, hold=self.hold)
                    for r in recipients]
        self.tried.extend(recipients)
        return [Attempt(rcpt=r, path=PATH, reply=parse_reply(250, "2.0.0 ok"))
                for r in recipients]


class Rig:
    def __init__(self) -> None:
        self.clock = Clock()
        self.sink = MemoryEventSink()
        self.transport = Transport()
        self.controls = ActiveControls(clock=self.clock)
        self.policy = PolicyHandle(parse_policy(POLICY))
        self.queue = MemoryQueue("outbound")

    def control(self, kind: str, cid: str = "c1", *, expires: float | None = None,
                reason: str = "gmail block", **selector: str) -> Control:
        c = Control(id=cid, kind=kind, selector=Selector.of(dict(selector)),  # type: ignore[arg-type]
                    reason=reason, who=WHO, created_at=self.clock.now - 1, expires_at=expires)
        self.controls.replace([*self.controls.controls(), c])
        return c

    async def run(self, body: str) -> bool:
        self.queue = MemoryQueue("outbound")
        completer = Completer(queue=self.queue, dlq=MemoryQueue("dlq"), sink=self.sink,
                              max_delay=0.01)
        handler = MessageHandler(
            policy=self.policy, transport=self.transport, signers=SignerSet([]),
            bodies=MemoryBodyStore("spill"), completer=completer,
            classifier=default_classifier(), rng=random.Random(1), clock=self.clock,
            controls=self.controls)
        await self.queue.send([Outgoing(body=body)])
        (received,) = await self.queue.receive(max_messages=1, wait_seconds=0, visibility=30)
        completer.start()
        try:
            return await handler.handle(received)
        finally:
            await completer.close()

    def finals(self) -> dict[str, dict]:
        return {r["rcpt"]: r for r in self.sink.records if r["event"] in FINAL_EVENTS}


def body(to: list[str], mid: str = "m-1", **extra: object) -> str:
    return json.dumps({"v": 1, "id": mid, "from": "bounce@example.com", "to": to,
                       "raw": base64.b64encode(MESSAGE).decode(), **extra})


async def test_a_paused_recipient_waits_in_the_queue_with_no_attempt_and_no_event() -> None:
    rig = Rig()
    rig.control("pause", domain="gmail.test")
    assert await rig.run(body(["a@gmail.test", "b@other.test"], _attempt=1,
                              _queued_at=T0 - 60))
    assert rig.transport.tried == ["b@other.test"]
    assert set(rig.finals()) == {"b@other.test"}  # the paused one: no event at all
    assert not any(r["rcpt"] == "a@gmail.test" for r in rig.sink.records)
    (held_body,) = rig.queue.bodies()
    held = decode(held_body)
    assert held.recipients == ("a@gmail.test",)
    assert held.attempt == 1  # not counted
    assert held.not_before == T0 + 120  # [controls] recheck
    assert held.queued_at == T0 - 60 and held.raw == MESSAGE
    last = held.last["a@gmail.test"]
    assert not last.tried and "paused by control c1" in last.text


async def test_a_pause_with_an_expiry_sooner_than_the_recheck_brings_mail_back_then() -> None:
    rig = Rig()
    rig.control("pause", expires=T0 + 30, tenant="acme")
    assert await rig.run(body(["a@x.test"], tenant="acme"))
    (held_body,) = rig.queue.bodies()
    assert decode(held_body).not_before == T0 + 30
    # Back after the pause lapsed: delivered, first attempt.
    rig.clock.now = T0 + 31
    assert await rig.run(held_body)
    record = rig.finals()["a@x.test"]
    assert record["event"] == "delivered" and record["attempt"] == 1


async def test_a_paused_recipient_never_waits_past_its_deadline_and_then_expires() -> None:
    rig = Rig()
    rig.control("pause", campaign="spring", reason="bad list")
    # max_age 1h; queued 59 min ago: held until the deadline, not the full recheck.
    assert await rig.run(body(["a@x.test"], campaign="spring", _queued_at=T0 - 3540))
    (held_body,) = rig.queue.bodies()
    assert decode(held_body).not_before == T0 + 60
    rig.clock.now = T0 + 60
    assert await rig.run(held_body)
    (record,) = rig.sink.records
    assert record["event"] == "expired" and record["attempt"] == 0
    assert record["reason"] == (f"max_age passed while paused by control c1 (pause "
                                f"campaign=spring by {WHO}): bad list")
    assert record["response"]["text"].startswith("never attempted: 451 4.3.2 paused by")
    assert rig.transport.tried == [] and len(rig.queue) == 0


async def test_an_admin_bounce_is_a_bounced_final_event_without_smtp() -> None:
    rig = Rig()
    rig.control("bounce", cid="b7", campaign="spring", reason="wrong list")
    assert await rig.run(body(["a@x.test", "b@y.test"], campaign="spring", _attempt=2))
    assert rig.transport.tried == [] and len(rig.queue) == 0
    finals = rig.finals()
    assert set(finals) == {"a@x.test", "b@y.test"}
    record = finals["a@x.test"]
    reason = f"admin bounce: wrong list (control b7 by {WHO})"
    assert record["event"] == "bounced" and record["reason"] == reason
    assert record["bounce"] == {"kind": "admin", "category": "admin-bounce", "reason": reason}
    assert record["attempt"] == 2 and record["response"] is None


async def test_a_stop_holds_every_recipient() -> None:
    rig = Rig()
    rig.control("stop", reason="incident 42")
    assert await rig.run(body(["a@x.test", "b@y.test"]))
    assert rig.transport.tried == [] and rig.sink.records == []
    (held_body,) = rig.queue.bodies()
    held = decode(held_body)
    assert held.recipients == ("a@x.test", "b@y.test") and held.attempt == 0
    assert "sending stopped by control c1" in held.last["a@x.test"].text


async def test_a_recipient_the_scheduler_holds_is_re_enqueued_uncounted() -> None:
    rig = Rig()
    rig.transport.hold = Hold(until=T0 + 45, why="paused by control c9 (pause provider=gmail)")
    assert await rig.run(body(["a@x.test"], _attempt=3, _queued_at=T0 - 60))
    assert rig.sink.records == []
    (held_body,) = rig.queue.bodies()
    held = decode(held_body)
    assert held.attempt == 3 and held.not_before == T0 + 45
    # Still held once its deadline has come: expired, naming the control.
    rig.clock.now = T0 + 3540
    assert await rig.run(held_body)
    (record,) = rig.sink.records
    assert record["event"] == "expired" and record["attempt"] == 3
    assert record["reason"].endswith("while paused by control c9 (pause provider=gmail)")


async def test_nothing_is_looked_up_when_no_control_is_in_force() -> None:
    rig = Rig()
    assert await rig.run(body(["a@x.test"]))
    assert rig.finals()["a@x.test"]["event"] == "delivered"


class Resolver:
    async def route(self, domain: str) -> Route:
        return Route(domain=domain, hosts=(MxHost("mx.gmail.test", 10, ("127.0.0.1",)),),
                     site="mx.gmail.test", provider="gmail")


def scheduler(controls: ActiveControls) -> Scheduler:
    policy = parse_policy(POLICY)
    return Scheduler(policy=policy, resolver=Resolver(),  # type: ignore[arg-type]
                     picker=SourcePicker(policy), controls=controls,
                     wall_clock=lambda: T0)


async def test_the_scheduler_holds_a_routed_pause_before_any_connection() -> None:
    controls = ActiveControls(clock=lambda: T0)
    controls.replace([Control(id="g1", kind="pause", selector=Selector(provider="gmail"),
                              reason="", who=WHO, created_at=T0 - 1)])
    s = scheduler(controls)
    attempts = await asyncio.wait_for(s.deliver(
        pool="p", domain="gmail.test", sender="a@news.test", recipients=["x@gmail.test"],
        message=MESSAGE), 10)
    (attempt,) = attempts
    assert not attempt.counts and attempt.hold is not None
    assert attempt.hold.until == T0 + 120 and "control g1" in attempt.hold.why
    assert attempt.reply.code == 451 and attempt.path.provider == "gmail"
    assert s.queues == {}  # no ready queue, no connection


async def test_a_new_pause_releases_the_jobs_already_queued() -> None:
    controls = ActiveControls(clock=lambda: T0)
    s = scheduler(controls)
    policy = s.policy.current
    route = await Resolver().route("gmail.test")
    queue = s._queue(policy.sources["s1"], route, "gmail.test")
    loop = asyncio.get_running_loop()
    waiting = Job(sender="a@news.test", recipients=["x@gmail.test"], message=MESSAGE,
                  future=loop.create_future(), pool="p", domain="gmail.test")
    other = Job(sender="a@news.test", recipients=["y@other.test"], message=MESSAGE,
                future=loop.create_future(), pool="p", domain="other.test")
    queue.jobs.extend([waiting, other])  # queued, no connection yet
    controls.replace([Control(id="d1", kind="pause", selector=Selector(domain="gmail.test"),
                              reason="", who=WHO, created_at=T0 - 1)])
    (attempt,) = waiting.future.result()
    assert attempt.hold is not None and not attempt.counts
    assert list(queue.jobs) == [other] and not other.future.done()
    other.future.cancel()


class RecordingQueue:
    """Counts receives; the first ends the run (a stop request)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.receives = 0

    async def receive(self, **kwargs: object) -> list[object]:
        self.receives += 1
        self.stop.set()
        return []

    async def change_visibility(self, receipts: list[str], *, seconds: int) -> None:
        pass


class IdleCompleter:
    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_no_receiver_receives_while_a_stop_is_in_force() -> None:
    from quiver.policy import Intake
    from quiver.sender.engine import Sender

    controls = ActiveControls(clock=lambda: T0)
    controls.replace([Control(id="s1", kind="stop", selector=Selector(), reason="",
                              who=WHO, created_at=T0 - 1)])
    stop = asyncio.Event()
    queue = RecordingQueue(stop)
    gated = asyncio.Event()

    async def gate(given: asyncio.Event) -> None:
        gated.set()
        await controls.wait_running(given)

    sender = Sender(intake=Intake(receivers=2, drain_deadline=1.0),
                    queue=queue,  # type: ignore[arg-type]
                    handler=None,  # type: ignore[arg-type]
                    completer=IdleCompleter(),  # type: ignore[arg-type]
                    gate=gate)
    run = asyncio.create_task(sender.run(stop))
    await asyncio.wait_for(gated.wait(), 10)
    await asyncio.sleep(0)  # a turn for the other receiver, which waits at the gate too
    assert queue.receives == 0
    controls.replace([])  # `quiver ctl start`, as the next poll reads it
    await asyncio.wait_for(run, 10)
    assert queue.receives >= 1
