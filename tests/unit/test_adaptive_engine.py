"""The adaptive engine with an injected clock: sliding windows, AIMD between the floor
and the static max, reduce at most once per window, raises after quiet windows, the
shared record's version condition, and suspensions as pause controls."""

from __future__ import annotations

import asyncio

import pytest

from quiver.adaptive import aimd
from quiver.adaptive.change import ChangeRecorder
from quiver.adaptive.engine import AdaptiveEngine
from quiver.adaptive.state import RateState
from quiver.adaptive.window import WindowCount
from quiver.controls.active import ActiveControls
from quiver.delivery import MESSAGE_LABELS, Attempt, Labels, Path
from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.smtp.reply import Reply
from quiver.storage.memory import MemoryControls, MemoryEventSink

POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[providers]
google = ["*.google.com"]
microsoft = ["*.outlook.com"]
[adaptive]
floor = "2/s"
step = "5/s"
quiet = "30s"
starter = false
[[adaptive.rules]]
name = "rate-limited"
provider = "google"
code = 421
enhanced = "4.7.28"
window = "60s"
threshold = 0.1
min_attempts = 10
action = "reduce"
factor = 0.5
[[adaptive.rules]]
name = "blocked"
provider = "microsoft"
text = "S3150"
window = "60s"
action = "suspend"
duration = "10m"
[[adaptive.rules]]
name = "tenant-complaints"
provider = "*"
text = "complaints"
window = "60s"
action = "suspend_tenant"
duration = "1h"
"""
OK = Reply(250, "2.0.0", "ok")
THROTTLE = Reply(421, "4.7.28", "rate limited")
BLOCK = Reply(451, "4.7.500", "banned sending IP (S3150) blocklisted")
GOOGLE = Path(source="s1", provider="google", site="google.com")
OUTLOOK = Path(source="s1", provider="microsoft", site="outlook.com")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, text: str = POLICY, *, store: MemoryControls | None = None,
                 clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.handle = PolicyHandle(parse_policy(text))
        self.events = MemoryEventSink()
        self.store = store if store is not None else MemoryControls()
        self.controls = ActiveControls(clock=self.clock)
        self.applied: list[tuple[str, str, float]] = []
        self.engine = AdaptiveEngine(
            policy=self.handle, recorder=ChangeRecorder(self.events),
            static_max=lambda source, provider: 100.0 if provider == "google" else None,
            apply_rate=lambda s, p, r: self.applied.append((s, p, r)),
            controls=self.controls, control_store=self.store, rate_store=self.store,
            clock=self.clock)

    def send(self, path: Path, replies: list[Reply]) -> None:
        self.engine.observe([Attempt(rcpt=f"r{i}@x.test", reply=r, path=path)
                             for i, r in enumerate(replies)])

    def settle(self) -> None:
        asyncio.run(self.engine.settle())


def test_window_counts_leave_as_time_passes() -> None:
    clock = Clock()
    window = WindowCount(60.0, clock=clock)
    window.add(3)
    clock.now += 30
    window.add(2)
    assert window.total() == 5
    clock.now += 36  # the first bucket is now out of the window
    assert window.total() == 2
    clock.now += 60
    assert window.total() == 0


def test_aimd_cuts_by_the_factor_to_the_floor_and_raises_by_the_step() -> None:
    rig = Rig()
    policy = rig.handle.current.adaptive
    rule = policy.rules_for("google")[0]
    state = aimd.reduced(None, source="s1", provider="google", static_max=100.0, rule=rule,
                         policy=policy, reason="x", now=0.0)
    assert state is not None and state.rate == 50.0
    # Within the rule's window: no second cut.
    assert aimd.reduced(state, source="s1", provider="google", static_max=100.0, rule=rule,
                        policy=policy, reason="x", now=30.0) is None
    rate = state
    for t in range(1, 10):
        nxt = aimd.reduced(rate, source="s1", provider="google", static_max=100.0, rule=rule,
                           policy=policy, reason="x", now=60.0 * t)
        if nxt is None:
            break
        rate = nxt
    assert rate.rate == 2.0  # the floor, never below
    # Not quiet long enough yet, then one step per quiet window, up to the static max.
    assert aimd.raised(rate, static_max=100.0, policy=policy, reset=False,
                       now=rate.since + 10) is None
    up = aimd.raised(rate, static_max=100.0, policy=policy, reset=False, now=rate.since + 30)
    assert up is not None and up.rate == 7.0 and up.version == rate.version + 1
    top = aimd.raised(up, static_max=100.0, policy=policy, reset=True, now=up.since + 30)
    assert top is not None and top.rate == 100.0
    assert aimd.raised(top, static_max=100.0, policy=policy, reset=False,
                       now=top.since + 30) is None


def test_a_throttle_share_over_the_threshold_cuts_the_rate_once_per_window() -> None:
    rig = Rig()
    rig.send(GOOGLE, [OK] * 18 + [THROTTLE])  # 1 of 19: under 10 %
    rig.settle()
    assert rig.applied == [] and rig.events.records == []
    rig.send(GOOGLE, [THROTTLE] * 3)  # 4 of 22
    rig.settle()
    assert rig.applied == [("s1", "google", 50.0)]
    assert rig.store.rate_states["s1|google"].rate == 50.0
    (event,) = rig.events.records
    assert (event["event"], event["actor"], event["action"], event["rule"]) == (
        "control", "adaptive", "reduce", "rate-limited")
    assert (event["old"], event["new"], event["selector"]) == (
        100.0, 50.0, {"source": "s1", "provider": "google"})
    assert event["observed"] == pytest.approx(2 / 20, abs=0.1)
    # More of the same storm within the window: no second cut.
    rig.send(GOOGLE, [THROTTLE] * 20)
    rig.settle()
    assert len(rig.applied) == 1
    # Next window, still throttled: cut again.
    rig.clock.now += 61
    rig.send(GOOGLE, [THROTTLE] * 20)
    rig.settle()
    assert rig.applied[-1] == ("s1", "google", 25.0)


def test_a_quiet_window_with_traffic_raises_the_rate_step_by_step() -> None:
    rig = Rig()
    rig.send(GOOGLE, [THROTTLE] * 10)
    rig.settle()
    assert rig.applied == [("s1", "google", 50.0)]
    rig.clock.now += 31
    rig.settle()  # quiet, but nothing sent lately: no probe
    assert len(rig.applied) == 1
    rig.send(GOOGLE, [OK] * 5)
    rig.settle()
    assert rig.applied[-1] == ("s1", "google", 55.0)
    (raise_event,) = [e for e in rig.events.records if e["action"] == "raise"]
    assert (raise_event["old"], raise_event["new"]) == (50.0, 55.0)
    rig.clock.now += 10
    rig.send(GOOGLE, [OK])
    rig.settle()  # 10 s after the raise: not a quiet window yet
    assert rig.applied[-1] == ("s1", "google", 55.0)


def test_a_stale_writer_rereads_and_does_not_cut_twice() -> None:
    store = MemoryControls()
    clock = Clock()
    first, second = Rig(store=store, clock=clock), Rig(store=store, clock=clock)
    first.send(GOOGLE, [THROTTLE] * 10)
    second.send(GOOGLE, [THROTTLE] * 10)
    first.settle()
    second.settle()  # its write is refused (version), it re-reads: already cut this window
    assert store.rate_states["s1|google"].rate == 50.0
    assert second.applied == [("s1", "google", 50.0)]  # the shared rate, applied
    assert [e["action"] for e in second.events.records] == []


def test_the_poll_hands_newer_records_to_the_throttles() -> None:
    rig = Rig()
    state = RateState(source="s1", provider="google", rate=12.0, static_max=100.0,
                      action="reduce", rule="rate-limited", reason="r", since=1.0,
                      reduced_at=1.0, version=3)
    rig.engine.shared([state])
    rig.engine.shared([state])
    assert rig.applied == [("s1", "google", 12.0)]
    assert rig.engine.status()["rates"][0]["rate"] == 12.0


def test_a_block_suspends_the_source_and_provider_at_once_for_the_rule_duration() -> None:
    rig = Rig()
    rig.send(OUTLOOK, [BLOCK])
    # Before anything is written: in force here.
    held = rig.controls.before_attempt(pool="p", domain="outlook.com", source="s1",
                                       provider="microsoft")
    assert held is not None and held.kind == "pause" and held.who == "adaptive"
    assert held.selector.named() == {"source": "s1", "provider": "microsoft"}
    assert held.expires_at == rig.clock.now + 600
    assert "S3150" in held.reason
    assert rig.controls.before_attempt(pool="p", domain="gmail.com", source="s1",
                                       provider="google") is None
    rig.send(OUTLOOK, [BLOCK] * 5)  # one suspension, not six
    rig.settle()
    assert list(rig.store.controls) == [held.id]
    (event,) = rig.events.records
    assert (event["action"], event["id"], event["rule"]) == ("suspend", held.id, "blocked")
    assert event["until"] is not None
    assert rig.engine.status()["suspensions"][0]["id"] == held.id


def test_a_tenant_rule_pauses_the_tenant_of_the_message() -> None:
    rig = Rig()
    token = MESSAGE_LABELS.set(Labels(tenant="acme", campaign="spring"))
    try:
        rig.send(GOOGLE, [Reply(550, "5.7.1", "too many user complaints")])
    finally:
        MESSAGE_LABELS.reset(token)
    held = rig.controls.on_receipt(pool="p", tenant="acme", campaign=None, domain="x.test")
    assert held is not None and held.selector.named() == {"tenant": "acme"}
    # Without a tenant there is nothing to pause.
    rig.send(GOOGLE, [Reply(550, "5.7.1", "too many user complaints")])
    assert len(rig.controls.controls()) == 1


def test_disabled_or_unattempted_replies_change_nothing() -> None:
    rig = Rig(POLICY.replace("[adaptive]\n", "[adaptive]\nenabled = false\n"))
    rig.send(GOOGLE, [THROTTLE] * 20)
    rig.send(OUTLOOK, [BLOCK])
    rig.settle()
    assert rig.applied == [] and rig.controls.empty
    rig = Rig()
    rig.engine.observe([Attempt(rcpt="a@x.test", reply=BLOCK, path=OUTLOOK, counts=False)])
    assert rig.controls.empty


def test_no_static_max_rate_means_reduce_does_nothing() -> None:
    text = POLICY.replace('provider = "google"\ncode = 421', 'provider = "microsoft"\ncode = 421')
    rig = Rig(text)
    rig.send(OUTLOOK, [THROTTLE] * 20)
    rig.settle()
    assert rig.applied == [] and rig.events.records == []


def test_a_table_that_refuses_writes_leaves_the_suspension_in_force_here() -> None:
    from quiver.storage.base import StorageError
    rig = Rig()
    rig.store.fail = StorageError("down")
    rig.send(OUTLOOK, [BLOCK])
    rig.settle()
    assert not rig.controls.empty
    assert [e["action"] for e in rig.events.records] == ["suspend"]


def test_turning_the_engine_off_restores_the_static_rates_and_on_applies_them_again() -> None:
    rig = Rig()
    rig.send(GOOGLE, [THROTTLE] * 10)
    rig.settle()
    assert rig.applied == [("s1", "google", 50.0)]
    on = rig.handle.current
    rig.handle.update(parse_policy(POLICY.replace("[adaptive]\n", "[adaptive]\nenabled = false\n")))
    rig.settle()
    assert rig.applied[-1] == ("s1", "google", float("inf"))
    rig.handle.update(on)
    rig.settle()
    assert rig.applied[-1] == ("s1", "google", 50.0)


def test_a_suspension_is_a_pause_by_adaptive_with_an_id_per_rule_selector_and_second() -> None:
    from quiver.adaptive.suspend import selector_for, suspension
    rule = Rig().handle.current.adaptive.rules_for("microsoft")[0]
    selector = selector_for(rule, source="s1", provider="microsoft", tenant="acme",
                            campaign=None)
    assert selector == {"source": "s1", "provider": "microsoft"}
    one = suspension(rule, selector, reason="451 4.7.500 (S3150)", now=100.2)
    same_second = suspension(rule, selector, reason="another sender's words", now=100.9)
    later = suspension(rule, selector, reason="x", now=101.0)
    assert (one.kind, one.who, one.created_at, one.expires_at) == ("pause", "adaptive", 100.2,
                                                                   700.2)
    assert one.id == same_second.id != later.id and one.id.startswith("adaptive-")
    assert selector_for(rule, source="s1", provider=None, tenant=None, campaign=None) is None
    # A control's reason is one line, whatever the reply said.
    assert suspension(rule, selector, reason="a\r\nb\0c " + "x" * 600, now=1.0).reason == \
        ("a b c " + "x" * 600)[:500]


def test_the_local_mx_blocks_a_blocklisted_address_once() -> None:
    from quiver.devstack.servers.mx_script import Action, behaviour_for
    from quiver.smtp.reply import parse_reply
    behaviour = behaviour_for("blocklisted-7@delta.test")
    assert (behaviour.action, behaviour.limit) == (Action.DEFER_N, 1)
    code, _, text = behaviour.reply.partition(" ")
    from quiver.adaptive.rules import rule_for
    from quiver.policy.adaptive import adaptive_section
    policy, _ = adaptive_section({}, providers={"microsoft"})
    rule = rule_for(policy, "microsoft", parse_reply(int(code), text))
    assert rule is not None and rule.name == "outlook-blocklisted" and rule.action == "suspend"


def test_a_tenant_label_no_control_can_name_is_logged_not_raised() -> None:
    rig = Rig()
    token = MESSAGE_LABELS.set(Labels(tenant="acme corp!"))  # a space: not a selector value
    try:
        rig.send(GOOGLE, [Reply(550, "5.7.1", "too many user complaints\r\nsecond line")])
    finally:
        MESSAGE_LABELS.reset(token)
    assert rig.controls.empty and rig.engine.fired == 0


def test_only_a_reply_a_reduce_rule_can_answer_by_a_cut_is_paced() -> None:
    """The scheduler skips the site backoff only for these (scheduler/ready.py)."""
    rig = Rig()
    assert rig.engine.paces("s1", "google", THROTTLE)
    assert not rig.engine.paces("s1", "google", Reply(421, "4.3.2", "not accepting"))
    assert not rig.engine.paces("s1", "microsoft", BLOCK)  # a suspend rule
    assert not rig.engine.paces("s1", None, THROTTLE)  # no provider, no rule
    text = POLICY.replace('provider = "google"\ncode = 421', 'provider = "microsoft"\ncode = 421')
    # A reduce rule with no static max_rate to cut: the backoff stands.
    assert not Rig(text).engine.paces("s1", "microsoft", THROTTLE)
    off = Rig(POLICY.replace("[adaptive]\n", "[adaptive]\nenabled = false\n"))
    assert not off.engine.paces("s1", "google", THROTTLE)
