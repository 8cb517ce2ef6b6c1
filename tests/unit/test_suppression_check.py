"""The sender's suppression check on the in-memory store: scopes, expiry, the cache
(positive and negative answers, its age and size bounds), batching across messages,
failures, and the writer behind hard bounces."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.storage.base import ALL_TENANTS, StorageError, Suppression
from quiver.storage.memory import MemorySuppression
from quiver.suppression import SuppressionCheck, SuppressionWriter, hard_bounce_entry
from quiver.suppression.check import BATCH_ADDRESSES, describe, suppressed_fields

T0 = 1_790_000_000.0
BASE = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def policy(extra: str = "") -> PolicyHandle:
    return PolicyHandle(parse_policy(BASE + "[suppression]\n" + extra))


def entry(address: str, tenant: str = ALL_TENANTS, **kw: object) -> Suppression:
    fields: dict[str, object] = {"reason": "manual", "created_at": T0 - 60}
    fields.update(kw)
    return Suppression(address=address, tenant=tenant, **fields)  # type: ignore[arg-type]


def rig(extra: str = "") -> tuple[MemorySuppression, SuppressionCheck, Clock]:
    clock = Clock()
    store = MemorySuppression(clock=clock)
    return store, SuppressionCheck(store, policy=policy(extra), clock=clock,
                                   monotonic=clock), clock


async def test_tenant_entries_apply_to_that_tenant_and_global_ones_to_everyone() -> None:
    store, check, _ = rig()
    await store.put(entry("a@x.test", tenant="t1", reason="unsubscribe"))
    await store.put(entry("b@x.test", reason="complaint"))
    recipients = ["a@x.test", "b@x.test", "c@x.test"]
    assert {r: e.reason for r, e in (await check.check(recipients, tenant="t1")).items()} == {
        "a@x.test": "unsubscribe", "b@x.test": "complaint"}
    assert list(await check.check(recipients, tenant="t2")) == ["b@x.test"]
    assert list(await check.check(recipients, tenant=None)) == ["b@x.test"]


async def test_recipients_compare_case_insensitively_and_come_back_as_given() -> None:
    store, check, _ = rig()
    await store.put(entry("ann@x.test"))
    found = await check.check(["Ann@X.test", "bob@x.test"], tenant=None)
    assert list(found) == ["Ann@X.test"] and found["Ann@X.test"].address == "ann@x.test"


async def test_answers_are_cached_both_ways_until_the_ttl() -> None:
    store, check, clock = rig('cache_ttl = "60s"')
    await store.put(entry("on@x.test"))
    await check.check(["on@x.test", "off@x.test"], tenant="t1")
    assert store.calls == 1
    # Cached: a suppressed and a not-suppressed answer, neither asks the store again.
    await store.put(entry("off@x.test"))
    await store.remove("on@x.test")
    clock.now += 59
    assert list(await check.check(["on@x.test", "off@x.test"], tenant="t1")) == ["on@x.test"]
    assert store.calls == 1
    # Past the TTL both are read afresh: the staleness bound is cache_ttl.
    clock.now += 1
    assert list(await check.check(["on@x.test", "off@x.test"], tenant="t1")) == ["off@x.test"]
    assert store.calls == 2


async def test_a_global_answer_is_shared_by_every_tenant_view() -> None:
    store, check, _ = rig()
    await store.put(entry("g@x.test"))
    await check.check(["g@x.test"], tenant="t1")
    assert store.calls == 1
    # t2 still needs its own scope's answer; the global one is cached.
    await check.check(["g@x.test"], tenant="t2")
    assert store.calls == 2
    assert list(await check.check(["g@x.test"], tenant=None)) == ["g@x.test"]
    assert store.calls == 2


async def test_a_tenant_entry_hides_the_global_answer_which_stays_unknown() -> None:
    store, check, _ = rig()
    await store.put(entry("a@x.test", tenant="t1"))
    await check.check(["a@x.test"], tenant="t1")
    calls = store.calls
    await check.check(["a@x.test"], tenant=None)  # global not known from t1's lookup
    assert store.calls == calls + 1


async def test_a_lapsed_entry_is_not_a_suppression_even_from_the_cache() -> None:
    store, check, clock = rig('cache_ttl = "10m"')
    await store.put(entry("soft@x.test", expires_at=int(T0) + 30))
    assert list(await check.check(["soft@x.test"], tenant=None)) == ["soft@x.test"]
    clock.now += 30
    assert await check.check(["soft@x.test"], tenant=None) == {}
    assert store.calls == 1  # answered from the cache, judged at the entry's expiry


async def test_a_lapsed_tenant_entry_falls_back_to_the_global_one() -> None:
    store, check, clock = rig()
    await store.put(entry("a@x.test", tenant="t1", expires_at=int(T0) + 5))
    await store.put(entry("a@x.test", reason="complaint"))
    assert (await check.check(["a@x.test"], tenant="t1"))["a@x.test"].tenant == "t1"
    clock.now += 100  # past the TTL and the tenant entry's expiry
    assert (await check.check(["a@x.test"], tenant="t1"))["a@x.test"].reason == "complaint"


async def test_the_cache_is_bounded_oldest_dropped_first() -> None:
    store, check, _ = rig("cache_entries = 100")
    await check.check([f"u{i}@x.test" for i in range(150)], tenant=None)
    assert len(check.cache) == 100
    calls = store.calls
    await check.check([f"u{i}@x.test" for i in range(100, 150)], tenant=None)
    assert store.calls == calls  # the newest are kept
    await check.check(["u0@x.test"], tenant=None)
    assert store.calls == calls + 1


async def test_cache_off_reads_every_time() -> None:
    store, check, _ = rig('cache_ttl = 0')
    for _ in range(3):
        await check.check(["a@x.test"], tenant=None)
    assert store.calls == 3 and len(check.cache) == 0


async def test_concurrent_messages_share_one_lookup_per_tenant() -> None:
    store, check, _ = rig()
    await store.put(entry("m3@x.test"))
    results = await asyncio.gather(*(check.check([f"m{i}@x.test"], tenant="t1")
                                     for i in range(10)),
                                   check.check(["n@x.test"], tenant="t2"))
    assert store.calls == 2  # one for t1's ten messages, one for t2
    assert [list(r) for r in results[:4]] == [[], [], [], ["m3@x.test"]]


async def test_messages_of_later_loop_turns_join_an_open_lookup_until_it_is_full() -> None:
    clock = Clock()
    store = MemorySuppression(clock=clock)
    # A window no test waits for: the lookup goes out because it filled up.
    check = SuppressionCheck(store, policy=policy(), clock=clock, monotonic=clock, window=3600)
    await check.check(["busy@x.test"], tenant="t")  # a lookup started: the next one waits
    assert store.calls == 1
    first = asyncio.ensure_future(check.check([f"a{i}@x.test" for i in range(30)], tenant="t"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(check.check([f"b{i}@x.test" for i in range(20)], tenant="t"))
    await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert store.calls == 2 and store.keys == 2 + 100


async def test_a_lookup_after_a_quiet_window_goes_out_at_once() -> None:
    clock = Clock()
    store = MemorySuppression(clock=clock)
    # A window no test waits for: only a lookup that does not wait for it can finish.
    check = SuppressionCheck(store, policy=policy(), clock=clock, monotonic=clock, window=3600)
    await asyncio.wait_for(check.check(["first@x.test"], tenant="t"), 60)
    clock.now += 3600  # the window since that lookup's start has passed
    await asyncio.wait_for(check.check(["later@x.test"], tenant="t"), 60)
    # Another tenant's lookups are paced on their own: its first goes at once too.
    await asyncio.wait_for(check.check(["other@x.test"], tenant="u"), 60)
    assert store.calls == 3


async def test_only_tenants_looked_up_within_the_window_are_remembered() -> None:
    clock = Clock()
    store = MemorySuppression(clock=clock)
    check = SuppressionCheck(store, policy=policy(), clock=clock, monotonic=clock, window=1)
    for i in range(100):
        await asyncio.wait_for(check.check([f"a{i}@x.test"], tenant=f"t{i}"), 60)
        clock.now += 1  # each tenant's window has passed before the next lookup
    assert store.calls == 100
    assert len(check._last_start) == 1  # the last one's; the 99 before were forgotten


async def test_a_lookup_within_the_window_waits_for_its_turn() -> None:
    clock = Clock()
    store = MemorySuppression(clock=clock)
    check = SuppressionCheck(store, policy=policy(), clock=clock, monotonic=clock, window=3600)
    await check.check(["first@x.test"], tenant="t")
    waiting = asyncio.ensure_future(check.check(["soon@x.test"], tenant="t"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and store.calls == 1  # held for the rest of the window
    waiting.cancel()


async def test_a_large_message_is_split_into_bounded_lookups() -> None:
    store, check, _ = rig()
    recipients = [f"r{i}@x.test" for i in range(100)]
    await check.check(recipients, tenant="t1")
    # 100 addresses x 2 scopes = 200 keys: two lookups of at most 100 keys.
    assert store.calls == 100 // BATCH_ADDRESSES
    assert store.keys == 200


async def test_a_failing_store_raises_to_every_waiter_and_caches_nothing() -> None:
    store, check, _ = rig()
    await store.put(entry("known@x.test"))
    await check.check(["known@x.test"], tenant=None)
    store.fail = StorageError("ProvisionedThroughputExceededException")
    waits = [check.check(["known@x.test", f"new{i}@x.test"], tenant=None) for i in range(3)]
    for outcome in await asyncio.gather(*waits, return_exceptions=True):
        assert isinstance(outcome, StorageError)
    # What is cached still answers without the store.
    assert list(await check.check(["known@x.test"], tenant=None)) == ["known@x.test"]
    store.fail = None
    assert await check.check(["new0@x.test"], tenant=None) == {}


async def test_failures_are_reported_once_per_interval_with_their_count(
        caplog: pytest.LogCaptureFixture) -> None:
    store, check, clock = rig()
    store.fail = StorageError("throttled")
    for i in range(5):
        with pytest.raises(StorageError):
            await check.check([f"f{i}@x.test"], tenant=None)
    clock.now += 10
    with pytest.raises(StorageError):
        await check.check(["g@x.test"], tenant=None)
    warnings = [r.getMessage() for r in caplog.records if r.name == "quiver.suppression"]
    assert warnings == [
        "suppression list unreadable (1 failed lookups since the last report): throttled; "
        "their messages are deferred ([suppression] on_error)",
        "suppression list unreadable (5 failed lookups since the last report): throttled; "
        "their messages are deferred ([suppression] on_error)"]
    assert check.failures == 6


async def test_a_cancelled_waiter_leaves_the_lookup_to_the_others() -> None:
    store, check, _ = rig()
    await store.put(entry("b@x.test"))
    first = asyncio.ensure_future(check.check(["a@x.test"], tenant=None))
    second = asyncio.ensure_future(check.check(["b@x.test"], tenant=None))
    await asyncio.sleep(0)
    first.cancel()
    assert list(await second) == ["b@x.test"]


async def test_learned_entries_apply_at_once_over_a_cached_negative() -> None:
    store, check, _ = rig()
    assert await check.check(["new@x.test"], tenant="t1") == {}
    check.learn(hard_bounce_entry(rcpt="New@x.test", tenant="t1", message_id="m1", at=T0,
                                  reply="550 5.1.1 user unknown"))
    found = await check.check(["new@x.test"], tenant="t1")
    assert found["new@x.test"].reason == "hard_bounce"
    assert store.calls == 1


def test_a_hard_bounce_of_a_message_without_tenant_is_global() -> None:
    e = hard_bounce_entry(rcpt="A@x.test", tenant=None, message_id="m1", at=T0, reply="550 x")
    assert (e.tenant, e.address, e.reason) == (ALL_TENANTS, "a@x.test", "hard_bounce")
    assert e.source.startswith("bounced m1 at 2026-") and e.source.endswith(": 550 x")
    long = hard_bounce_entry(rcpt="a@x.test", tenant="t", message_id="m", at=T0, reply="x" * 2000)
    assert len(long.source) == 512


def test_event_fields_name_reason_scope_time_and_source() -> None:
    e = entry("a@x.test", tenant="t1", reason="unsubscribe", source="one-click",
              expires_at=int(T0) + 3600)
    reason, bounce = suppressed_fields(e)
    assert reason == ("on the suppression list: unsubscribe in scope tenant:t1 since "
                      "2026-09-21T14:12:20.000Z until 2026-09-21T15:13:20.000Z; "
                      "source: one-click")
    assert bounce == {"kind": "suppressed", "category": "unsubscribe", "reason": reason}
    assert describe(replace(e, tenant=ALL_TENANTS, source="", expires_at=None)) == (
        "unsubscribe in scope global since 2026-09-21T14:12:20.000Z")


async def test_the_writer_batches_and_retries_then_reports_what_it_could_not_write() -> None:
    store, check, _ = rig()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    writer = SuppressionWriter(store, check=check, sleep=sleep)
    writer.add([entry(f"w{i}@x.test", tenant="t1", reason="hard_bounce") for i in range(60)])
    assert len(store.entries) == 0  # written behind, not on add
    assert len(await check.check(["w0@x.test"], tenant="t1")) == 1  # but in force here
    await writer.flush()
    assert len(store.entries) == 60 and store.writes == 3  # batches of 25
    store.fail = StorageError("down")
    writer.add([entry("lost@x.test", reason="hard_bounce")])
    await writer.flush()
    assert writer.dropped == 1 and len(slept) == 4


async def test_the_writer_runs_until_stop_and_close_writes_the_rest() -> None:
    store, _, _ = rig()
    writer = SuppressionWriter(store)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    writer.add([entry("a@x.test", reason="hard_bounce")])
    for _ in range(100):
        if store.entries:
            break
        await asyncio.sleep(0)
    assert ("*", "a@x.test") in store.entries
    stop.set()
    await asyncio.wait_for(task, 10)
    writer.add([entry("b@x.test", reason="hard_bounce")])
    await writer.close()
    assert ("*", "b@x.test") in store.entries


@pytest.mark.parametrize("text, problem", [
    ('on_error = "drop"', "suppression.on_error: expected 'defer' or 'send'"),
    ('cache_ttl = "1h"', "suppression.cache_ttl: must be between 0s and 900s"),
    ("cache_entries = -1", "suppression.cache_entries: expected a whole number"),
    ('error_retry = "1s"', "suppression.error_retry: must be between 5s and 3600s"),
    ("hard_bounce_categories = [1]", "suppression.hard_bounce_categories: expected a list"),
    ("colour = 1", "suppression.colour: unknown key"),
])
def test_policy_section_refuses_bad_values_with_their_path(text: str, problem: str) -> None:
    from quiver.policy import PolicyError

    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + "[suppression]\n" + text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_policy_section_defaults_and_values() -> None:
    default = parse_policy(BASE).suppression
    assert (default.on_error, default.cache_ttl, default.cache_entries,
            default.hard_bounce_categories, default.error_retry) == (
        "defer", 60.0, 50_000, ("bad-mailbox",), 60.0)
    set_ = parse_policy(BASE + '[suppression]\non_error = "send"\ncache_ttl = "30s"\n'
                        'cache_entries = 10\nhard_bounce_categories = []\nerror_retry = "2m"'
                        ).suppression
    assert (set_.on_error, set_.cache_ttl, set_.cache_entries, set_.hard_bounce_categories,
            set_.error_retry) == ("send", 30.0, 10, (), 120.0)


def test_the_section_applies_live_on_reload() -> None:
    from quiver.policy.reload import merge_live

    current = parse_policy(BASE)
    merged, change = merge_live(current, parse_policy(BASE + '[suppression]\non_error = "send"'))
    assert merged.suppression.on_error == "send" and change.applied == ("suppression",)
    assert change.restart == ()


ADDRESSES = [f"a{i}@x.test" for i in range(6)]
TENANTS = [None, "t1", "t2"]
operations = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(ADDRESSES),
              st.sampled_from([ALL_TENANTS, "t1", "t2"]),
              st.one_of(st.none(), st.integers(1, 200))),
    st.tuples(st.just("remove"), st.sampled_from(ADDRESSES),
              st.sampled_from([ALL_TENANTS, "t1", "t2"])),
    st.tuples(st.just("check"), st.lists(st.sampled_from(ADDRESSES), max_size=4),
              st.sampled_from(TENANTS)),
    st.tuples(st.just("wait"), st.integers(1, 120)),
), max_size=40)


@given(operations, st.integers(1, 8))
def test_answers_are_the_store_s_once_the_ttl_has_passed(ops: list[tuple], size: int) -> None:
    """Whatever happens, a check made `cache_ttl` after the last change answers as the
    store does, expiry included, and the cache holds at most `cache_entries` answers."""

    async def run() -> None:
        store, check, clock = rig(f'cache_ttl = "30s"\ncache_entries = {size}')
        for op in ops:
            if op[0] == "put":
                _, address, tenant, lifetime = op
                await store.put(entry(address, tenant=tenant, created_at=clock.now,
                                      expires_at=None if lifetime is None
                                      else int(clock.now) + lifetime))
            elif op[0] == "remove":
                await store.remove(op[1], tenant=op[2])
            elif op[0] == "check":
                found = await check.check(op[1], tenant=op[2])
                # What the check says is suppressed is in force (not lapsed) now.
                assert all(e.active(clock.now) for e in found.values())
            else:
                clock.now += op[1]
            assert len(check.cache) <= size
        clock.now += 30
        for tenant in TENANTS:
            assert await check.check(ADDRESSES, tenant=tenant) == \
                await store.lookup(ADDRESSES, tenant=tenant)

    asyncio.run(run())
