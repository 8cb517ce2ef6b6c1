"""One adaptive change, and how it is recorded: a `control` event (actor `adaptive`)
and an EMF document, each naming the rule, what it observed, and the old and new
value.

Kinds of change (the event's `action`):
- `reduce` / `raise`: a (source, provider) send rate cut by a rule or raised after a
  quiet window (old and new: messages per second, cluster-wide);
- `suspend`: a pause control put in force for a while (source and provider, tenant or
  campaign); `resume` when an adaptive pause is lifted early;
- `warmup_advance` / `warmup_hold`: a warming source's day moved on, or held because
  its bounce or deferral rate was out of bounds (old and new: the day).

A change is about a selector (the fields it concerns, as an operator control's), not
a recipient: `rcpt` and `from` are null and `attempt` is 0, as on every control event.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TextIO

from quiver import emf
from quiver.events import VERSION, EventRecord, rfc3339_ms
from quiver.storage.base import EventSink, StorageError

log = logging.getLogger("quiver.adaptive")

ACTOR: Final = "adaptive"
Action = Literal["reduce", "raise", "suspend", "resume", "warmup_advance", "warmup_hold"]
# The EMF metric each change adds 1 to, under dimensions (Action) and (Action, Rule).
CHANGES_METRIC: Final = "adaptive_changes"


@dataclass(frozen=True, slots=True)
class AdaptiveChange:
    action: Action
    # The fields the change is about (source, provider, tenant, campaign), as a control's.
    selector: Mapping[str, str]
    rule: str  # the policy rule or template that acted, e.g. "gmail-rate-limited"
    reason: str  # one line: what was seen, e.g. "421 4.7.28 on 7 of 60 attempts in 60s"
    at: float  # epoch seconds
    observed: float | None = None
    old: float | None = None
    new: float | None = None
    until: float | None = None  # epoch seconds (a suspension's end); None: no end
    # The control id when the change put one in force (a suspension), else derived.
    control_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The event's `id`: the control's, or one derived from the change (the same
        change recorded twice has one id, so readers can drop the copy)."""
        if self.control_id is not None:
            return self.control_id
        key = "\x1f".join([self.action, self.rule, f"{self.at:.3f}",
                           *(f"{k}={v}" for k, v in sorted(self.selector.items()))])
        return "adaptive-" + hashlib.sha256(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        what = " ".join(f"{k}={v}" for k, v in self.selector.items()) or "everything"
        values = ""
        if self.old is not None or self.new is not None:
            values = f" {_num(self.old)} -> {_num(self.new)}"
        return f"adaptive {self.action} {what}{values} by rule {self.rule}: {self.reason}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def change_event(change: AdaptiveChange) -> EventRecord:
    """The `control` event of one adaptive change (quiver.events, CONTROL_EVENTS)."""
    selector = dict(change.selector)
    return {
        "v": VERSION, "event": "control", "at": rfc3339_ms(change.at), "id": change.id,
        "rcpt": None, "from": None, "tenant": selector.get("tenant"),
        "campaign": selector.get("campaign"), "pool": selector.get("pool"), "meta": {},
        "attempt": 0, "action": change.action, "actor": ACTOR, "selector": selector,
        "reason": change.reason,
        "until": rfc3339_ms(change.until) if change.until is not None else None,
        "rule": change.rule, "observed": change.observed, "old": change.old,
        "new": change.new,
    }


def change_metric(change: AdaptiveChange) -> dict[str, Any]:
    """The EMF document of one change: 1 `adaptive_changes` by action, and by action
    and rule (alarms watch the first, dashboards rank the second)."""
    return emf.document(
        at_ms=int(change.at * 1000),
        dimensions={"Action": change.action, "Rule": change.rule},
        values={CHANGES_METRIC: (1, emf.COUNT)},
        dimension_sets=[["Action"], ["Action", "Rule"]],
    )


class ChangeRecorder:
    """Records adaptive changes: logs each, writes its EMF line to `metrics_out`, and
    publishes its event to `events`. A failed publish is logged and the change stands
    (as an operator's: a suspension must not wait for the events queue)."""

    def __init__(self, events: EventSink | None, *, metrics_out: TextIO | None = None) -> None:
        self._events = events
        self._metrics_out = metrics_out

    async def record(self, changes: Sequence[AdaptiveChange]) -> bool:
        if not changes:
            return True
        for change in changes:
            log.warning("%s", change.describe())
        if self._metrics_out is not None:
            emf.write(self._metrics_out, (change_metric(c) for c in changes))
        if self._events is None:
            return True
        records = [change_event(c) for c in changes]
        batch = "adaptive" + hashlib.sha256(
            "".join(c.id for c in changes).encode()).hexdigest()[:32]
        try:
            await self._events.publish(records, batch_id=batch)
        except StorageError as exc:
            log.warning("adaptive change in force, but its event was not recorded: %s", exc)
            return False
        return True
