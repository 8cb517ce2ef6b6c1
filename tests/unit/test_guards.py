"""Tenant guards without a network: folding events into counts, window sums and rates,
the thresholds, and a guard over the in-memory store pausing once per crossing."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from quiver.events import rfc3339_ms
from quiver.guards.counts import Counts, fold, record_counts
from quiver.guards.guard import PAUSES_METRIC, Guard
from quiver.guards.rates import COMPLAINT_RULE, HARD_BOUNCE_RULE, judge, window_sum
from quiver.guards.store import MemoryGuardStore
from quiver.policy.guards import GuardLimits, GuardsPolicy

T0 = 1_790_000_000.0 - (1_790_000_000 % 600)  # a bucket's start


def event(kind: str, *, at: float = T0, tenant: str | None = "a",
          campaign: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "event": kind, "at": rfc3339_ms(at), "id": "m", "rcpt": "r@x.test",
            "tenant": tenant, "campaign": campaign, **extra}


def hard(kind: str = "bounced", **kw: Any) -> dict[str, Any]:
    return event(kind, bounce={"kind": "hard", "category": "bad-mailbox", "reason": ""}, **kw)


def test_what_each_event_counts_for() -> None:
    assert record_counts(event("delivered")) == Counts(attempts=1)
    assert record_counts(hard()) == Counts(attempts=1, hard_bounces=1)
    assert record_counts(hard("async_bounce")) == Counts(hard_bounces=1)
    soft = event("bounced", bounce={"kind": "soft", "category": "x", "reason": ""})
    assert record_counts(soft) == Counts(attempts=1)
    assert record_counts(event("complaint", feedback_type="abuse")) == Counts(complaints=1)
    assert record_counts(event("complaint", feedback_type="not-spam")) == Counts()
    for kind in ("deferred", "suppressed", "rejected", "expired", "unsubscribed", "control"):
        assert record_counts(event(kind)) == Counts(), kind


def test_fold_by_tenant_campaign_and_bucket() -> None:
    records = [event("delivered", campaign="c1"), event("delivered", at=T0 + 599),
               event("delivered", at=T0 + 600, tenant="b"),
               event("complaint", campaign="c1", feedback_type="abuse"),
               event("delivered", tenant=None), {**event("delivered"), "at": "garbage"},
               event("deferred")]
    counts = fold(records, bucket_seconds=600)  # type: ignore[arg-type]
    bucket = int(T0)
    assert counts == {
        ("tenant", "a", bucket): Counts(attempts=2, complaints=1),
        ("campaign", "c1", bucket): Counts(attempts=1, complaints=1),
        ("tenant", "b", bucket + 600): Counts(attempts=1),
    }


def test_window_sum_keeps_the_last_buckets_only() -> None:
    b = int(T0)
    buckets = {b - 3600: Counts(attempts=100), b - 3000: Counts(attempts=10),
               b: Counts(attempts=1)}
    # An hour ending inside bucket b: b and the five before it.
    assert window_sum(buckets, now=T0 + 10, window=3600).attempts == 11
    assert window_sum(buckets, now=T0 + 600, window=3600).attempts == 1


def test_thresholds_and_min_volume() -> None:
    policy = GuardsPolicy()
    limits = GuardLimits(min_volume=1000)
    b = int(T0)
    assert judge({b: Counts(attempts=999, complaints=900)}, now=T0, policy=policy,
                 limits=limits) == []  # too few to judge
    assert judge({b: Counts(attempts=1000, complaints=2)}, now=T0, policy=policy,
                 limits=limits) == []
    [breach] = judge({b: Counts(attempts=1000, complaints=3)}, now=T0, policy=policy,
                     limits=limits)
    assert breach.rule == COMPLAINT_RULE
    assert breach.reason() == "complaint rate 0.3 % (3 of 1000) over 24h ≥ 0.3 %"
    both = judge({b: Counts(attempts=5000, complaints=21, hard_bounces=250)}, now=T0,
                 policy=policy, limits=limits)
    assert [x.rule for x in both] == [COMPLAINT_RULE, HARD_BOUNCE_RULE]
    assert both[0].reason() == "complaint rate 0.42 % (21 of 5000) over 24h ≥ 0.3 %"
    assert both[1].reason() == "hard bounce rate 5 % (250 of 5000) over 1h ≥ 5 %"
    # Hard bounces count over their own, shorter window.
    old = {b - 7200: Counts(attempts=5000, hard_bounces=5000), b: Counts(attempts=1000)}
    assert judge(old, now=T0, policy=policy, limits=limits) == []
    assert judge({b: Counts(attempts=5000, complaints=900)}, now=T0, policy=policy,
                 limits=GuardLimits(enabled=False)) == []


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 1

    def __call__(self) -> float:
        return self.now


def batch(tenant: str, *, delivered: int, complaints: int, at: float) -> list[Any]:
    return ([event("delivered", tenant=tenant, at=at)] * delivered
            + [event("complaint", tenant=tenant, at=at, feedback_type="abuse")] * complaints)


def test_a_guard_pauses_once_per_crossing() -> None:
    store, clock, metrics = MemoryGuardStore(), Clock(), io.StringIO()
    policy = GuardsPolicy(defaults=GuardLimits(min_volume=100, pause_for=3600))
    guard = Guard(store, policy=lambda: policy, clock=clock, metrics_out=metrics)
    assert guard.observe("b1", batch("a", delivered=100, complaints=0, at=T0)) == []
    assert guard.observe("b2", batch("b", delivered=100, complaints=0, at=T0)) == []
    [change] = guard.observe("b3", batch("a", delivered=0, complaints=1, at=T0))
    assert (change.action, dict(change.selector), change.rule) == (
        "suspend", {"tenant": "a"}, COMPLAINT_RULE)
    assert change.observed == 0.01 and change.until == clock.now + 3600
    assert change.reason == "complaint rate 1 % (1 of 100) over 24h ≥ 0.3 %"
    [control] = store.controls.values()
    assert (control.kind, control.who, control.selector.named()) == (
        "pause", "adaptive", {"tenant": "a"})
    assert control.id == change.control_id and control.expires_at == clock.now + 3600
    doc = json.loads(metrics.getvalue())
    assert doc[PAUSES_METRIC] == 1 and doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0] == []
    # More complaints while the crossing stands (or the same batch again) pause nothing.
    assert guard.observe("b4", batch("a", delivered=0, complaints=2, at=T0)) == []
    assert guard.observe("b3", batch("a", delivered=0, complaints=1, at=T0)) == []
    assert len(store.controls) == 1
    # Back below 80 % of the threshold ends the crossing; the next one pauses again.
    guard.observe("b5", batch("a", delivered=2000, complaints=0, at=T0))
    assert not store.tripped[("tenant", "a")]
    assert len(guard.observe("b6", batch("a", delivered=0, complaints=20, at=T0))) == 1
    assert len(store.controls) == 2


def test_a_batch_counts_once() -> None:
    store = MemoryGuardStore()
    guard = Guard(store, policy=GuardsPolicy, clock=Clock())
    records = batch("a", delivered=30, complaints=0, at=T0) * 2
    guard.observe("same", records)
    guard.observe("same", records)
    assert store.buckets[("tenant", "a")] == {int(T0): Counts(attempts=60)}


def test_counts_outside_every_window_and_disabled_names_are_not_kept() -> None:
    store, clock = MemoryGuardStore(), Clock()
    policy = GuardsPolicy(tenants={"off": GuardLimits(enabled=False)})
    guard = Guard(store, policy=lambda: policy, clock=clock)
    guard.observe("x", batch("a", delivered=5, complaints=0, at=T0 - 2 * 86400)
                  + batch("off", delivered=5, complaints=5, at=T0))
    assert store.buckets == {}


def test_no_policy_means_no_guards() -> None:
    store = MemoryGuardStore()
    assert Guard(store, policy=lambda: None).observe(
        "x", batch("a", delivered=0, complaints=9, at=T0)) == []
    assert store.buckets == {}


def test_a_name_no_selector_can_hold_is_counted_not_paused() -> None:
    store = MemoryGuardStore()
    policy = GuardsPolicy(defaults=GuardLimits(min_volume=1))
    guard = Guard(store, policy=lambda: policy, clock=Clock())
    assert guard.observe("x", batch("bad name", delivered=1, complaints=1, at=T0)) == []
    assert store.controls == {} and store.buckets[("tenant", "bad name")]


_KINDS = ["delivered", "bounced", "deferred", "async_bounce", "complaint", "suppressed",
          "control", "expired"]


@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.sampled_from(["hard", "soft"]),
                          st.sampled_from([None, "a", "b"]), st.sampled_from([None, "c"]),
                          st.integers(0, 7200),
                          st.sampled_from(["abuse", "not-spam", "other"])),
                max_size=60))
def test_folding_loses_and_invents_nothing(draws: list[tuple[Any, ...]]) -> None:
    records = [event(kind, at=T0 + offset, tenant=tenant, campaign=campaign,
                     bounce={"kind": bounce, "category": "x", "reason": ""},
                     feedback_type=feedback)
               for kind, bounce, tenant, campaign, offset, feedback in draws]
    folded = fold(records, bucket_seconds=600)  # type: ignore[arg-type]
    for scope in ("tenant", "campaign"):
        total = Counts()
        for (s, _, bucket), counts in folded.items():
            assert bucket % 600 == 0 and not counts.empty
            if s == scope:
                total = total + counts
        expected = Counts()
        for record in records:
            if record[scope]:
                expected = expected + record_counts(record)
        assert total == expected
