"""Operator controls: what a control may be, how selectors match, the sender's active
set (expiry on the clock, listeners, the stop gate) and its poller. In memory, a fake
clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from quiver.controls.active import ActiveControls, hold_reason, hold_until
from quiver.controls.model import Control, ControlError, Selector
from quiver.controls.poller import ControlPoller
from quiver.storage.base import StorageError
from quiver.storage.memory import MemoryControls

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def control(kind: str = "pause", cid: str = "c1", expires: float | None = None,
            **selector: str) -> Control:
    return Control(id=cid, kind=kind, selector=Selector.of(dict(selector)),  # type: ignore[arg-type]
                   reason="gmail block", who="arn:aws:iam::1:user/ops", created_at=T0 - 10,
                   expires_at=expires)


def test_selector_fields_are_validated_and_domains_normalised() -> None:
    assert Selector.of({"domain": "Gmail.COM."}).domain == "gmail.com"
    with pytest.raises(ControlError, match="not a domain"):
        Selector.of({"domain": "gmail..com"})
    with pytest.raises(ControlError, match="--tenant"):
        Selector.of({"tenant": "a b"})
    with pytest.raises(ControlError, match="unknown selector"):
        Selector.of({"mx": "x"})


def test_what_a_control_may_be() -> None:
    with pytest.raises(ControlError, match="needs a selector"):
        control("pause")
    with pytest.raises(ControlError, match="names no selector"):
        control("stop", domain="a.test")
    with pytest.raises(ControlError, match="cannot name --source"):
        control("bounce", source="ip1")
    with pytest.raises(ControlError, match="one line"):
        Control(id="c1", kind="pause", selector=Selector(domain="a.test"), reason="a\nb",
                who="me", created_at=T0)
    with pytest.raises(ControlError, match="after created_at"):
        control("pause", expires=T0 - 20, domain="a.test")


def test_every_named_field_must_match() -> None:
    s = Selector.of({"domain": "gmail.com", "tenant": "acme"})
    assert s.matches({"domain": "GMAIL.com", "tenant": "acme", "pool": "p"})
    assert not s.matches({"domain": "gmail.com", "tenant": "other"})
    assert not s.matches({"domain": "gmail.com"})  # tenant unknown: cannot match
    assert not s.matches({"domain": "mail.gmail.com", "tenant": "acme"})  # exact domain


def test_an_empty_set_matches_nothing_and_a_pause_matches_its_mail() -> None:
    clock = Clock()
    active = ActiveControls(clock=clock)
    assert active.empty
    assert active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test") is None
    active.replace([control(domain="a.test")])
    found = active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test")
    assert found is not None and found.id == "c1"
    assert active.on_receipt(pool="p", tenant=None, campaign=None, domain="b.test") is None
    assert active.before_attempt(pool="p", domain="a.test", source="s1", provider=None)


def test_routed_pauses_apply_before_the_attempt_only() -> None:
    active = ActiveControls(clock=Clock())
    active.replace([control(provider="gmail"), control(cid="c2", tenant="acme")])
    # On receipt the provider is not known yet.
    assert active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test") is None
    held = active.before_attempt(pool="p", domain="a.test", source="s1", provider="gmail")
    assert held is not None and held.id == "c1"
    # A tenant pause is a receipt-time one: the scheduler does not know the tenant.
    assert active.before_attempt(pool="p", domain="a.test", source="s1", provider=None) is None
    assert active.on_receipt(pool="p", tenant="acme", campaign=None, domain="a.test")


def test_a_bounce_comes_before_a_stop_and_a_stop_before_a_pause() -> None:
    active = ActiveControls(clock=Clock())
    active.replace([control(cid="p1", domain="a.test"), control("stop", cid="s1"),
                    control("bounce", cid="b1", campaign="spring")])
    first = active.on_receipt(pool="p", tenant=None, campaign="spring", domain="a.test")
    assert first is not None and first.kind == "bounce"
    second = active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test")
    assert second is not None and second.kind == "stop"


def test_an_expired_control_lapses_on_the_clock_without_a_read() -> None:
    clock = Clock()
    active = ActiveControls(clock=clock)
    active.replace([control(expires=T0 + 60, domain="a.test")])
    assert active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test")
    clock.now = T0 + 60
    assert active.on_receipt(pool="p", tenant=None, campaign=None, domain="a.test") is None
    active.replace([control(expires=T0 + 60, domain="a.test")])  # still in the table
    assert active.empty


def test_hold_until_is_the_recheck_or_the_expiry_if_sooner() -> None:
    assert hold_until(control(domain="a.test"), now=T0, recheck=60) == T0 + 60
    assert hold_until(control(expires=T0 + 10, domain="a.test"), now=T0, recheck=60) == T0 + 10
    text = hold_reason(control(domain="a.test"))
    assert text == ("paused by control c1 (pause domain=a.test by arn:aws:iam::1:user/ops): "
                    "gmail block")


def test_listeners_hear_of_added_controls_only() -> None:
    active = ActiveControls(clock=Clock())
    heard: list[int] = []
    active.listen(lambda: heard.append(1))
    active.replace([control(domain="a.test")])
    active.replace([control(domain="a.test")])
    active.replace([])
    assert heard == [1]


async def test_the_stop_gate_holds_receivers_until_start() -> None:
    active = ActiveControls(clock=Clock())
    stop = asyncio.Event()
    await asyncio.wait_for(active.wait_running(stop), 1)  # nothing in force: at once
    active.replace([control("stop", cid="s1")])
    assert active.stopped() is not None
    waiter = asyncio.create_task(active.wait_running(stop))
    await asyncio.sleep(0)
    assert not waiter.done()
    active.replace([])
    await asyncio.wait_for(waiter, 5)
    active.replace([control("stop", cid="s2")])
    waiter = asyncio.create_task(active.wait_running(stop))
    stop.set()  # shutting down: the gate lets go
    await asyncio.wait_for(waiter, 5)


async def test_the_first_read_is_retried_until_it_succeeds() -> None:
    store = MemoryControls()
    store.fail = StorageError("Query: unreachable")
    await store_put(store, control("stop", cid="s1"))
    active = ActiveControls(clock=Clock())
    poller = ControlPoller(store, active, interval=lambda: 0.01)
    stop = asyncio.Event()
    loading = asyncio.create_task(poller.load(stop))
    await until(lambda: poller.failures >= 3)
    assert not loading.done() and not active.loaded
    store.fail = None
    await asyncio.wait_for(loading, 5)
    assert active.stopped() is not None


async def test_a_failed_poll_keeps_the_last_set() -> None:
    store = MemoryControls()
    await store.put(control(domain="a.test"))
    active = ActiveControls(clock=Clock())
    poller = ControlPoller(store, active, interval=lambda: 0.01)
    assert await poller.read()
    store.fail = StorageError("Query: throttled")
    assert not await poller.read()
    assert not active.empty


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Wait for `condition`, checking between event-loop turns; fail after `deadline`."""
    async with asyncio.timeout(deadline):
        while not condition():
            await asyncio.sleep(0.005)


async def store_put(store: MemoryControls, c: Control) -> None:
    failing, store.fail = store.fail, None
    await store.put(c)
    store.fail = failing
