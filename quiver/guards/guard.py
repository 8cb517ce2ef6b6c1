"""One export batch through the guards: count it, judge each tenant and campaign it
names, and pause the ones whose rate crossed its threshold, once per crossing.

A pause is an operator control (quiver.controls) in every respect senders see: the
same item in the controls table, a `pause` of {tenant} or {campaign}, so mail waits
(held and rechecked, never bounced) until it lapses or `quiver ctl resume` lifts it.
Its `who` is `adaptive`, and the change is returned as an `AdaptiveChange` (action
`suspend`, the rule, the observed rate) for the caller to record.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, TextIO

from quiver import emf
from quiver.adaptive.change import ACTOR, AdaptiveChange
from quiver.controls.model import Control, ControlError, Selector
from quiver.events import Record
from quiver.guards.counts import Scope, fold
from quiver.guards.rates import Breach, first_bucket, judge
from quiver.guards.store import GuardStore
from quiver.policy.guards import BUCKET_SECONDS, GuardLimits, GuardsPolicy

log = logging.getLogger("quiver.guards")

# The EMF metric each guard pause adds 1 to: without dimensions (the GuardPaused
# alarm) and by (Scope, Rule) for dashboards.
PAUSES_METRIC: Final = "guard_pauses"
# A crossing ends when the rate falls below this share of its threshold: a rate that
# hovers at the threshold pauses once, not again after each operator resume.
REARM_FRACTION: Final = 0.8


class Guard:
    """Runs `[guards]` (from `policy()`, None: guards off) over export batches."""

    def __init__(self, store: GuardStore, *, policy: Callable[[], GuardsPolicy | None],
                 clock: Callable[[], float] = time.time,
                 metrics_out: TextIO | None = None) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._metrics_out = metrics_out

    def observe(self, batch_id: str, records: Sequence[Record]) -> list[AdaptiveChange]:
        """Count `batch_id`'s records (once, however often it comes) and return the
        pauses this batch put in force. Raises StorageError if the table fails."""
        policy = self._policy()
        if policy is None:
            return []
        now = self._clock()
        oldest = first_bucket(now, policy.longest_window)
        # Records older than every window change no rate; a disabled name is not kept.
        counts = {k: c for k, c in fold(records, bucket_seconds=BUCKET_SECONDS).items()
                  if k[2] >= oldest and policy.limits(k[0], k[1]).enabled}
        if not counts:
            return []
        self._store.add(batch_id, counts, now=now,
                        keep_for=policy.longest_window + BUCKET_SECONDS)
        # Judged even when the batch was counted before: a run that failed between
        # counting and pausing is finished by the next.
        changes = []
        for scope, name in sorted({(scope, name) for scope, name, _ in counts}):
            change = self._judge(scope, name, policy=policy, now=now, oldest=oldest,
                                 batch_id=batch_id)
            if change is not None:
                changes.append(change)
        return changes

    def _judge(self, scope: Scope, name: str, *, policy: GuardsPolicy, now: float,
               oldest: int, batch_id: str) -> AdaptiveChange | None:
        limits = policy.limits(scope, name)
        standing = self._store.standing(scope, name, since=oldest)
        if standing.tripped:
            if not judge(standing.buckets, now=now, policy=policy, limits=limits,
                         scale=REARM_FRACTION):
                self._store.rearm(scope, name)
                log.info("guard: %s %s back below its thresholds", scope, name)
            return None
        breaches = judge(standing.buckets, now=now, policy=policy, limits=limits)
        if not breaches:
            return None
        return self._pause(scope, name, breaches[0], limits=limits, now=now,
                           batch_id=batch_id)

    def _pause(self, scope: Scope, name: str, breach: Breach, *, limits: GuardLimits,
               now: float, batch_id: str) -> AdaptiveChange | None:
        try:
            control = Control(
                id=control_id(scope, name, batch_id), kind="pause",
                selector=Selector.of({scope: name}), reason=breach.reason(), who=ACTOR,
                created_at=now,
                expires_at=now + limits.pause_for if limits.pause_for is not None else None)
        except ControlError as exc:
            # A name no control can select (the envelope allows more than selectors):
            # it is counted, but the guard cannot hold its mail.
            log.error("guard: %s %r crossed (%s) but cannot be paused: %s",
                      scope, name, breach.reason(), exc)
            return None
        if not self._store.trip(scope, name, control):
            return None  # another export put this crossing's pause in force
        if self._metrics_out is not None:
            emf.write(self._metrics_out, [emf.document(
                at_ms=int(now * 1000), dimensions={"Scope": scope, "Rule": breach.rule},
                values={PAUSES_METRIC: (1, emf.COUNT)}, dimension_sets=[[], ["Scope", "Rule"]],
            )])
        return AdaptiveChange(
            action="suspend", selector={scope: name}, rule=breach.rule,
            reason=breach.reason(), at=now, observed=breach.rate,
            until=control.expires_at, control_id=control.id,
            extra={"count": breach.count, "attempts": breach.attempts,
                   "threshold": breach.threshold},
        )


def control_id(scope: Scope, name: str, batch_id: str) -> str:
    """The pause's id: fixed by the batch that crossed, so a re-run names the same."""
    digest = hashlib.sha256(f"{scope}\x1f{name}\x1f{batch_id}".encode()).hexdigest()
    return f"guard-{digest[:16]}"
