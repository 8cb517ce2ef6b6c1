"""The guards' store on moto's server over HTTP, against the in-memory fake's rules: a
batch counts once (also past one transaction), windows slide with an injected clock,
and a pause is one control in the table that `DynamoControls` (what senders poll)
reads as an operator's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto_tables import fresh_table

from quiver.controls.model import Control, Selector
from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.events import rfc3339_ms
from quiver.guards.counts import Counts
from quiver.guards.guard import Guard
from quiver.guards.store import DynamoGuardStore, GuardStore, MemoryGuardStore
from quiver.policy.guards import GuardLimits, GuardsPolicy
from quiver.storage.dynamo import DynamoControls

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0 - (1_790_000_000 % 600)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("guards"))
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture
def dynamo(moto: MotoServer) -> tuple[DynamoGuardStore, DynamoControls]:
    ddb = client(moto.endpoint, "dynamodb")
    table = fresh_table(ddb)
    return DynamoGuardStore(ddb, table), DynamoControls(ddb, table)


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> GuardStore:
    if request.param == "memory":
        return MemoryGuardStore()
    guard_store, _ = request.getfixturevalue("dynamo")
    return guard_store  # type: ignore[no-any-return]


def pause(cid: str) -> Control:
    return Control(id=cid, kind="pause", selector=Selector(tenant="a"), reason="r",
                   who="adaptive", created_at=T0)


def test_a_batch_counts_once_across_transactions(store: GuardStore) -> None:
    b = int(T0)
    # 60 keys: three transactions of 24 counters and a claim each.
    counts = {("tenant", f"t{i:02d}", b): Counts(attempts=i + 1, complaints=1)
              for i in range(60)}
    assert store.add("batch-1", counts, now=T0, keep_for=90000)
    assert not store.add("batch-1", counts, now=T0, keep_for=90000)
    assert store.add("batch-2", {("tenant", "t05", b): Counts(hard_bounces=2)}, now=T0,
                     keep_for=90000)
    standing = store.standing("tenant", "t05", since=b)
    assert standing.buckets == {b: Counts(attempts=6, hard_bounces=2, complaints=1)}
    assert not standing.tripped
    assert store.standing("tenant", "t59", since=b).buckets == {b: Counts(60, 0, 1)}
    assert store.standing("campaign", "t05", since=b).buckets == {}


def test_standing_reads_from_the_window_start(store: GuardStore) -> None:
    b = int(T0)
    for i, bucket in enumerate((b - 1200, b - 600, b)):
        store.add(f"w{i}", {("campaign", "c", bucket): Counts(attempts=10 ** i)}, now=T0,
                  keep_for=3600)
    assert store.standing("campaign", "c", since=b - 600).buckets == {
        b - 600: Counts(attempts=10), b: Counts(attempts=100)}


def test_trip_once_until_rearmed(store: GuardStore) -> None:
    assert store.trip("tenant", "a", pause("guard-1"))
    assert store.standing("tenant", "a", since=0).tripped
    assert not store.trip("tenant", "a", pause("guard-2"))
    store.rearm("tenant", "a")
    store.rearm("tenant", "a")  # not tripped: nothing to do, no error
    assert not store.standing("tenant", "a", since=0).tripped
    assert store.trip("tenant", "a", pause("guard-3"))


async def test_a_guard_pause_is_a_control_senders_read(
        dynamo: tuple[DynamoGuardStore, DynamoControls]) -> None:
    guard_store, controls = dynamo
    now = [T0 + 5]
    policy = GuardsPolicy(defaults=GuardLimits(min_volume=100, pause_for=7200))
    guard = Guard(guard_store, policy=lambda: policy, clock=lambda: now[0])
    delivered = [{"event": "delivered", "at": rfc3339_ms(T0), "tenant": "acme"}] * 200
    assert guard.observe("b1", delivered) == []  # type: ignore[arg-type]
    complaint = [{"event": "complaint", "at": rfc3339_ms(T0), "tenant": "acme",
                  "feedback_type": "abuse"}]
    [change] = guard.observe("b2", complaint)  # type: ignore[arg-type]
    [control] = await controls.all()
    assert (control.id, control.kind, control.who, control.selector) == (
        change.control_id, "pause", "adaptive", Selector(tenant="acme"))
    assert control.reason == "complaint rate 0.5 % (1 of 200) over 24h ≥ 0.3 %"
    assert control.expires_at == T0 + 5 + 7200
    # The same batch again (a re-delivery) neither counts nor pauses again.
    assert guard.observe("b2", complaint) == []  # type: ignore[arg-type]
    assert guard_store.standing("tenant", "acme", since=int(T0)).buckets[int(T0)] == Counts(
        attempts=200, complaints=1)
    assert len(await controls.all()) == 1


def test_windows_slide_with_the_clock(dynamo: tuple[DynamoGuardStore, DynamoControls]) -> None:
    guard_store, _ = dynamo
    now = [T0 + 1]
    policy = GuardsPolicy(defaults=GuardLimits(min_volume=100))
    guard = Guard(guard_store, policy=lambda: policy, clock=lambda: now[0])
    hard = {"event": "bounced", "at": rfc3339_ms(T0), "tenant": "t",
            "bounce": {"kind": "hard", "category": "bad-mailbox", "reason": ""}}
    ok = {"event": "delivered", "at": rfc3339_ms(T0), "tenant": "t"}
    [change] = guard.observe("h1", [hard] * 10 + [ok] * 90)  # type: ignore[arg-type]
    assert change.rule == "guard-hard-bounce-rate" and change.observed == 0.1
    # An hour on, the bounces have left the hard bounce window: fresh mail is judged
    # alone, below min_volume, and the crossing ends (the next one would pause again).
    now[0] = T0 + 3600 + 1
    later = {**ok, "at": rfc3339_ms(now[0])}
    assert guard.observe("h2", [later]) == []  # type: ignore[arg-type]
    assert not guard_store.standing("tenant", "t", since=0).tripped
    # A day on, even the complaint window holds nothing of T0: a record that old is not
    # counted at all.
    now[0] = T0 + 86400 + 600
    assert guard.observe("h3", [hard]) == []  # type: ignore[arg-type]
    assert guard_store.standing("tenant", "t", since=0).buckets == {
        int(T0): Counts(attempts=100, hard_bounces=10),
        int(T0) + 3600: Counts(attempts=1)}
