"""The adaptive engine: watches every attempt's reply and acts on the response rules.

`observe` runs on the hot path, once per delivery, and stays cheap: a positive reply
costs a counter per (source, provider); a refusal is matched against its provider's
rules (rules.py). A rule that fires is decided here and carried out by `run`, off
the delivery path:
- reduce: the (source, provider)'s shared rate is cut (aimd.py), written to the
  controls table with a version condition (state.py), applied to this sender's
  throttles at once and to the others' at their next controls poll;
- suspend / suspend_tenant / suspend_campaign: a pause control (suspend.py), in
  force on this sender at once (before the next delivery), written to the controls
  table for the others.
Every change is recorded by the ChangeRecorder (a `control` event, actor `adaptive`,
and an EMF metric). After a quiet window with traffic and no throttle reply, `run`
raises an adapted rate by one step (aimd.py).

Times are wall-clock epoch seconds (injected): the shared records are compared
across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quiver.adaptive import aimd
from quiver.adaptive.change import ACTOR, AdaptiveChange, ChangeRecorder
from quiver.adaptive.rules import rule_for
from quiver.adaptive.state import RateState
from quiver.adaptive.suspend import selector_for, suspension
from quiver.adaptive.window import WindowCount
from quiver.controls.active import ActiveControls
from quiver.controls.model import Control, ControlError
from quiver.delivery import MESSAGE_LABELS, Attempt
from quiver.events import rfc3339_ms
from quiver.policy.adaptive import AdaptivePolicy, ResponseRule
from quiver.policy.handle import PolicyHandle
from quiver.smtp.reply import Reply
from quiver.storage.base import ControlStore, RateStore, StorageError

log = logging.getLogger("quiver.adaptive")

# Window counters kept (per rule and source x provider, tenant or campaign): the
# least recently used go first, so a stream of new campaigns cannot grow memory.
MAX_COUNTERS = 20_000
# How often `run` looks for quiet windows to raise rates after.
TICK = 1.0
# A version conflict means another sender wrote first: re-read and decide again, a
# few times at most (each round is one read and one write).
MAX_WRITE_ROUNDS = 3

Key = tuple[str, str]  # (source, provider)
Scope = Callable[[str, str | None, str | None, str | None], tuple[str, ...] | None]
# What a rule counts over: its action's selector.
_KIND = {"reduce": "sp", "suspend": "sp", "suspend_tenant": "tenant",
         "suspend_campaign": "campaign"}
_SCOPES: dict[str, Scope] = {
    "sp": lambda source, provider, tenant, campaign:
        ("sp", source, provider) if provider else None,
    "tenant": lambda source, provider, tenant, campaign:
        ("tenant", tenant) if tenant else None,
    "campaign": lambda source, provider, tenant, campaign:
        ("campaign", campaign) if campaign else None,
}


@dataclass(frozen=True, slots=True)
class _Fired:
    rule: ResponseRule
    selector: dict[str, str]
    observed: float
    reason: str
    at: float
    control: Control | None = None


def _raise(state: RateState | None, static: float, *, policy: AdaptivePolicy, reset: bool,
           now: float) -> RateState | None:
    return None if state is None else aimd.raised(state, static_max=static, policy=policy,
                                                  reset=reset, now=now)


class AdaptiveEngine:
    def __init__(self, *, policy: PolicyHandle, recorder: ChangeRecorder,
                 static_max: Callable[[str, str], float | None],
                 apply_rate: Callable[[str, str, float], None],
                 controls: ActiveControls | None = None,
                 control_store: ControlStore | None = None,
                 rate_store: RateStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._recorder = recorder
        self._static_max = static_max
        self._apply_rate = apply_rate
        self._controls = controls
        self._control_store = control_store
        self._rate_store = rate_store
        self._clock = clock
        self._counters: OrderedDict[tuple[str, ...], WindowCount] = OrderedDict()
        # The cluster's records as last read or written here.
        self.rates: dict[Key, RateState] = {}
        self._sending: dict[Key, float] = {}  # last attempt
        self._throttled: dict[Key, float] = {}  # last reply a reduce rule matched
        self._reducing: dict[Key, float] = {}  # last reduce fired here (one per window)
        self._suspended: dict[tuple[tuple[str, str], ...], float] = {}  # selector: until
        self._pending: list[_Fired] = []
        self._wake = asyncio.Event()
        self._no_max_warned: set[Key] = set()
        self._plan_for: AdaptivePolicy | None = None
        self._enabled = policy.current.adaptive.enabled
        self._plans: dict[str | None, tuple[tuple[str, float], ...]] = {}
        self.fired = 0

    @property
    def policy(self) -> AdaptivePolicy:
        return self._policy.current.adaptive

    # --- the hot path -------------------------------------------------------------
    def observe(self, attempts: Sequence[Attempt]) -> None:
        """One delivery's attempts (at one destination)."""
        policy = self._policy.current.adaptive
        if not policy.enabled or not policy.rules:
            return
        now = self._clock()
        labels = MESSAGE_LABELS.get()
        for attempt in attempts:
            source = attempt.path.source
            if not attempt.counts or source is None:
                continue
            provider = attempt.path.provider
            rules = policy.rules_for(provider)
            if not rules:
                continue
            key = (source, provider or "")
            self._sending[key] = now
            for kind, window in self._denominators(policy, provider):
                scope = _SCOPES[kind](source, provider, labels.tenant, labels.campaign)
                if scope is not None:
                    self._counter(("attempts", *scope, str(window)), window).add()
            rule = rule_for(policy, provider, attempt.reply)
            if rule is None:
                continue
            if rule.action == "reduce":
                self._throttled[key] = now
            scope = self._scope(rule, source, provider, labels.tenant, labels.campaign)
            if scope is None:
                continue
            matches = self._counter(("matches", rule.name, *scope), rule.window)
            matches.add()
            self._judge(rule, matches.total(), scope, attempt, now, source=source,
                        provider=provider, tenant=labels.tenant, campaign=labels.campaign)

    def paces(self, source: str, provider: str | None, reply: Reply) -> bool:
        """Whether a reduce rule answers `reply` from `source` at `provider` by cutting a
        rate that exists (a static max_rate there): the scheduler then paces instead of
        backing the site off (scheduler/ready.py, closed_by_server)."""
        policy = self._policy.current.adaptive
        if not policy.enabled or provider is None:
            return False
        rule = rule_for(policy, provider, reply)
        return (rule is not None and rule.action == "reduce"
                and self._static_max(source, provider) is not None)

    @staticmethod
    def _scope(rule: ResponseRule, source: str, provider: str | None, tenant: str | None,
               campaign: str | None) -> tuple[str, ...] | None:
        return _SCOPES[_KIND[rule.action]](source, provider, tenant, campaign)

    def _denominators(self, policy: AdaptivePolicy,
                      provider: str | None) -> tuple[tuple[str, float], ...]:
        """The attempt counts a provider's threshold rules divide by: one per scope
        and window (most providers: one), so an attempt costs a counter or two."""
        if policy is not self._plan_for:
            self._plan_for, self._plans = policy, {}
        plan = self._plans.get(provider)
        if plan is None:
            plan = self._plans[provider] = tuple(dict.fromkeys(
                (_KIND[r.action], r.window) for r in policy.rules_for(provider)
                if r.threshold is not None))
        return plan

    def _counter(self, key: tuple[str, ...], window: float) -> WindowCount:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = WindowCount(window, clock=self._clock)
            if len(self._counters) > MAX_COUNTERS:
                self._counters.popitem(last=False)
        else:
            self._counters.move_to_end(key)
        return counter

    def _judge(self, rule: ResponseRule, matches: int, scope: tuple[str, ...],
               attempt: Attempt, now: float, *, source: str, provider: str | None,
               tenant: str | None, campaign: str | None) -> None:
        reply = attempt.reply
        said = f"{reply.code}{' ' + reply.enhanced if reply.enhanced else ''}"
        if rule.threshold is None:
            observed = float(matches)
            reason = f"{said} matched rule {rule.name}: {reply.text[:160]}"
        else:
            attempts = self._counter(("attempts", *scope, str(rule.window)), rule.window).total()
            share = matches / attempts if attempts else 0.0
            if attempts < rule.min_attempts or share < rule.threshold:
                return
            observed = share
            reason = (f"{said} on {matches} of {attempts} attempts in {rule.window:g}s "
                      f"({share:.1%} >= {rule.threshold:.1%})")
        selector = selector_for(rule, source=source, provider=provider, tenant=tenant,
                                campaign=campaign)
        if selector is None:
            return
        if rule.action == "reduce":
            key = (source, provider or "")
            if now - self._reducing.get(key, -math.inf) < rule.window:
                return
            self._reducing[key] = now
            self._queue(_Fired(rule, selector, observed, reason, now))
            return
        held = tuple(sorted(selector.items()))
        if self._suspended.get(held, -math.inf) > now:
            return
        try:
            control = suspension(rule, selector, reason=reason, now=now)
        except ControlError as exc:
            log.warning("adaptive: rule %s cannot suspend %s: %s", rule.name, selector, exc)
            self._suspended[held] = now + (rule.duration or 0.0)  # said once per duration
            return
        self._suspended[held] = control.expires_at or now
        if self._controls is not None:
            # In force here before the next delivery; the table tells the others.
            self._controls.add(control)
        self._queue(_Fired(rule, selector, observed, reason, now, control))

    def _queue(self, fired: _Fired) -> None:
        self.fired += 1
        self._pending.append(fired)
        self._wake.set()

    # --- off the hot path ---------------------------------------------------------
    def shared(self, states: Sequence[RateState]) -> None:
        """The records the controls poll read: newer ones replace what this sender
        knows, and pace its throttles."""
        enabled = self.policy.enabled
        for state in states:
            key = (state.source, state.provider)
            known = self.rates.get(key)
            if known is None or state.version > known.version:
                self.rates[key] = state
                if enabled:
                    self._apply_rate(state.source, state.provider, state.rate)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            try:
                await self.settle()
            except Exception:  # a bug here must not stop the sender's deliveries
                log.exception("adaptive engine: a change was not carried out")

    async def settle(self) -> None:
        """Carry out what fired, then raise what was quiet long enough."""
        self._wake.clear()
        self._follow_switch()
        now = self._clock()
        # Suspensions that ended are forgotten (tenants and campaigns come and go).
        self._suspended = {k: until for k, until in self._suspended.items() if until > now}
        pending, self._pending = self._pending, []
        for fired in pending:
            if fired.control is not None:
                await self._suspend(fired)
            else:
                await self._reduce(fired)
        await self._raise_quiet()

    def _follow_switch(self) -> None:
        """`[adaptive] enabled` turned off: the throttles go back to their static
        limits (the records stay, and apply again when it is turned back on)."""
        enabled = self.policy.enabled
        if enabled == self._enabled:
            return
        self._enabled = enabled
        for state in self.rates.values():
            self._apply_rate(state.source, state.provider,
                             state.rate if enabled else math.inf)

    async def _suspend(self, fired: _Fired) -> None:
        control = fired.control
        assert control is not None
        if self._control_store is not None:
            try:
                await self._control_store.put(control)
            except StorageError as exc:
                log.warning("adaptive suspension in force on this sender only (the "
                            "controls table refused it: %s)", exc)
        await self._recorder.record([AdaptiveChange(
            action="suspend", selector=fired.selector, rule=fired.rule.name,
            reason=fired.reason, at=fired.at, observed=fired.observed,
            until=control.expires_at, control_id=control.id)])
        if fired.rule.recovery == "floor":
            source, provider = fired.selector["source"], fired.selector["provider"]
            await self._change((source, provider), lambda state, static: aimd.floored(
                state, source=source, provider=provider, static_max=static, rule=fired.rule,
                policy=self.policy, reason=f"restarts from the floor after {control.id}",
                now=fired.at), rule=fired.rule.name, observed=fired.observed)

    async def _reduce(self, fired: _Fired) -> None:
        source, provider = fired.selector["source"], fired.selector["provider"]
        await self._change((source, provider), lambda state, static: aimd.reduced(
            state, source=source, provider=provider, static_max=static, rule=fired.rule,
            policy=self.policy, reason=fired.reason, now=fired.at),
            rule=fired.rule.name, observed=fired.observed)

    async def _raise_quiet(self) -> None:
        policy = self.policy
        if not policy.enabled:
            return
        now = self._clock()
        for key, state in list(self.rates.items()):
            static = self._static_max(*key)
            if static is None or state.rate >= static:
                continue
            quiet = policy.quiet
            if (now - self._throttled.get(key, -math.inf) < quiet
                    or now - state.since < quiet
                    or now - self._sending.get(key, -math.inf) >= quiet):
                continue  # throttled lately, changed lately, or not sending: no probe
            reset = any(r.name == state.rule and r.recovery == "reset" for r in policy.rules)
            await self._change(key, functools.partial(_raise, policy=policy, reset=reset,
                                                      now=now),
                               rule=state.rule, observed=None)

    async def _change(self, key: Key,
                      decide: Callable[[RateState | None, float], RateState | None], *,
                      rule: str, observed: float | None) -> None:
        """Decide the next record from the newest known one, write it if the stored
        version is still the one decided from, apply and record it."""
        static = self._static_max(*key)
        if static is None:
            if key not in self._no_max_warned:
                self._no_max_warned.add(key)
                log.warning("adaptive: no throttle sets max_rate for source %s, provider %s: "
                            "rule %s has no rate to reduce", key[0], key[1], rule)
            return
        state = self.rates.get(key)
        for _ in range(MAX_WRITE_ROUNDS):
            new = decide(state, static)
            if new is None:
                return
            if self._rate_store is None:
                written = True
            else:
                try:
                    written = await self._rate_store.put_rate(
                        new, expected=state.version if state is not None else None)
                    if not written:
                        state = await self._rate_store.rate(*key)
                        if state is not None:
                            self.shared([state])
                except StorageError as exc:
                    log.warning("adaptive: rate of %s x %s not changed (controls table: %s)",
                                key[0], key[1], exc)
                    return
            if written:
                old = min(state.rate, static) if state is not None else static
                self.rates[key] = new
                self._apply_rate(new.source, new.provider, new.rate)
                await self._recorder.record([AdaptiveChange(
                    action="raise" if new.action == "raise" else "reduce",
                    selector={"source": new.source, "provider": new.provider}, rule=rule,
                    reason=new.reason, at=new.since, observed=observed, old=old,
                    new=new.rate)])
                return

    # --- for the live status ------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status's `adaptive` part: each adapted (source, provider) rate with its
        reason and since when, and the adaptive suspensions in force here."""
        now = self._clock()
        suspensions = [] if self._controls is None else [
            c.as_dict() for c in self._controls.controls()
            if c.who == ACTOR and c.active(now)]
        return {"enabled": self.policy.enabled,
                "rates": [{**s.as_dict(), "since": rfc3339_ms(s.since)} for s in self.adapted()],
                "suspensions": suspensions}

    def adapted(self) -> list[RateState]:
        """The (source, provider) rates held below their static limit."""
        return sorted((s for s in self.rates.values() if s.adapted),
                      key=lambda s: (s.source, s.provider))
