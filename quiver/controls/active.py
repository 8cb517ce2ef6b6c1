"""A sender's view of the controls in force, and how mail is matched against it.

The poller (poller.py) replaces the whole set at every read; between reads each
match compares expiry with the clock, so a control lapses on time even while the
table cannot be read. Most of the time the set is empty and every match returns
at its first test; operators keep tens of controls at most, so a match scans the
few of the kinds it asks for.

Where each kind applies (the sender's two places):
- on receipt (pool, tenant, campaign and each recipient's domain known): an admin
  bounce first, then a stop, then a pause whose selector names no routed field;
- in the scheduler, once a recipient is routed (pool, domain, source, provider
  known, tenant and campaign not): a stop, or any pause whose selector names only
  those fields. A pause by tenant or campaign is applied on receipt only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable

from quiver.controls.model import Control, Kind

log = logging.getLogger("quiver.controls")

# The enhanced status of the reply a held recipient carries (never sent by a server:
# RFC 3463's "system not accepting network messages"): an `expired` event's reason
# names the control that held it last.
HOLD_STATUS = "4.3.2"


class ActiveControls:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_kind: dict[Kind, tuple[Control, ...]] = {}
        self._ids: frozenset[str] = frozenset()
        # Set while no stop is in force: receivers wait on it.
        self._running = asyncio.Event()
        self._running.set()
        self._listeners: list[Callable[[], None]] = []
        self._announced = ""
        self.loaded = False

    @property
    def empty(self) -> bool:
        return not self._ids

    def controls(self) -> list[Control]:
        return [c for group in self._by_kind.values() for c in group]

    def listen(self, callback: Callable[[], None]) -> None:
        """`callback()` after each change that adds a control (a new pause or stop must
        reach mail already waiting for a connection)."""
        self._listeners.append(callback)

    def replace(self, controls: Iterable[Control]) -> None:
        """The set just read from the store (expired ones are dropped here)."""
        self._apply(controls)
        self.loaded = True

    def add(self, control: Control) -> None:
        """One control put in force by this process (an adaptive suspension): applied
        now, without waiting for the next read of the table that holds it."""
        self._apply([*(c for c in self.controls() if c.id != control.id), control])

    def refresh(self) -> None:
        """Re-check expiry without a read (the table could not be read)."""
        self._apply(self.controls())

    def _apply(self, controls: Iterable[Control]) -> None:
        now = self._clock()
        live = [c for c in controls if c.active(now)]
        ids = frozenset(c.id for c in live)
        added = [c for c in live if c.id not in self._ids]
        removed = self._ids - ids
        by_kind: dict[Kind, list[Control]] = {}
        for control in sorted(live, key=lambda c: (c.created_at, c.id)):
            by_kind.setdefault(control.kind, []).append(control)
        self._by_kind = {k: tuple(v) for k, v in by_kind.items()}
        self._ids = ids
        for control in added:
            until = "until lifted" if control.expires_at is None else \
                f"for {max(0.0, control.expires_at - now):.0f}s"
            log.warning("%s in force %s: %s", control.describe(), until, control.reason or "-")
        for control_id in sorted(removed):
            log.warning("control %s no longer in force", control_id)
        self._sync_running()
        if added:
            for callback in self._listeners:
                callback()

    def stopped(self) -> Control | None:
        """The emergency stop in force, if any."""
        return self._first(("stop",), {})

    def on_receipt(self, *, pool: str, tenant: str | None, campaign: str | None,
                   domain: str) -> Control | None:
        """What holds or disposes of a recipient when its message is received: an
        admin bounce, else a stop, else a pause (by receipt-time fields)."""
        if not self._ids:
            return None
        values = {"pool": pool, "tenant": tenant, "campaign": campaign, "domain": domain}
        return self._first(("bounce", "stop", "pause"), values)

    def before_attempt(self, *, pool: str, domain: str, source: str,
                       provider: str | None) -> Control | None:
        """What holds a routed recipient before its transaction starts: a stop, or a
        pause by pool, domain, source and provider (those named)."""
        if not self._ids:
            return None
        values = {"pool": pool, "domain": domain, "source": source, "provider": provider}
        return self._first(("stop", "pause"), values)

    def _first(self, kinds: tuple[Kind, ...], values: dict[str, str | None]) -> Control | None:
        now = self._clock()
        for kind in kinds:
            for control in self._by_kind.get(kind, ()):
                if control.active(now) and control.selector.matches(values):
                    return control
        return None

    def _sync_running(self) -> None:
        if self._first(("stop",), {}) is None:
            self._running.set()
        else:
            self._running.clear()

    async def wait_running(self, stop: asyncio.Event) -> None:
        """Return at once unless a stop is in force; else when it is lifted (or expires:
        the poller refreshes the set) or `stop` is set."""
        if self._running.is_set():
            return
        stopped = self.stopped()
        if stopped is not None and stopped.id != self._announced:
            self._announced = stopped.id  # once per stop, not once per receiver
            log.warning("sending stopped by %s: receiving nothing until `quiver ctl start`",
                        stopped.describe())
        waiters = [asyncio.ensure_future(self._running.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def hold_until(control: Control, *, now: float, recheck: float) -> float:
    """When mail held by `control` is looked at again: at the control's expiry, or after
    `recheck` if that is sooner (the control may be lifted before it expires)."""
    expires = control.expires_at if control.expires_at is not None else math.inf
    return min(expires, now + recheck)


def hold_reason(control: Control) -> str:
    """The text a held recipient carries as its last reply (an `expired` event's
    response names the control by it)."""
    what = "sending stopped" if control.kind == "stop" else "paused"
    why = f": {control.reason}" if control.reason else ""
    return f"{what} by {control.describe()}{why}"
