"""`quiver ctl ...`: the operations behind the commands, on any ControlStore and
EventSink (command.py parses and builds the AWS ones).

Each change writes the table first (that is what senders obey), then records one
`control` event per control added or removed. If the event cannot be recorded the
change stands and the command says so (exit 1): a stop must not wait for the
events queue. Exit status: 0 done, 1 nothing matched or the event was not
recorded, 2 (raised as StorageError) the table failed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from quiver.controls.model import Control, Kind, Selector
from quiver.events import VERSION, EventRecord, rfc3339_ms
from quiver.storage.base import ControlStore, EventSink, StorageError

Action = str  # pause, resume, bounce, cancel, stop, start


def new_id() -> str:
    """A short id an operator can type (`quiver ctl cancel <id>`)."""
    return secrets.token_hex(4)


def control_event(control: Control, *, action: Action, actor: str, at: float) -> EventRecord:
    """The `control` event of one change (quiver.events, CONTROL_EVENTS)."""
    named = control.selector.named()
    return {
        "v": VERSION, "event": "control", "at": rfc3339_ms(at), "id": control.id,
        "rcpt": None, "from": None, "tenant": named.get("tenant"),
        "campaign": named.get("campaign"), "pool": named.get("pool"), "meta": {},
        "attempt": 0, "action": action, "actor": actor, "selector": named,
        "reason": control.reason,
        "until": rfc3339_ms(control.expires_at) if control.expires_at is not None else None,
    }


async def _record(events: EventSink, changes: Sequence[tuple[Control, Action]], *,
                  actor: str, at: float, err: TextIO) -> int:
    if not changes:
        return 0
    records = [control_event(c, action=a, actor=actor, at=at) for c, a in changes]
    # Fixed by the changes, so publishing again after a failure exports them once.
    batch = "ctl" + "".join(f"{c.id}{a}" for c, a in changes).replace("-", "")[:64]
    try:
        await events.publish(records, batch_id=batch)
    except StorageError as exc:
        print(f"the change is in force, but its `control` event was not recorded: {exc}",
              file=err)
        return 1
    return 0


async def add(store: ControlStore, events: EventSink, *, kind: Kind, selector: Selector,
              reason: str, who: str, now: float, duration: float | None,
              out: TextIO, err: TextIO) -> int:
    """Put a new control in force (pause, bounce, stop)."""
    control = Control(id=new_id(), kind=kind, selector=selector, reason=reason, who=who,
                      created_at=now, expires_at=now + duration if duration else None)
    await store.put(control)
    print(f"{control.id}: {describe(control, now=now)}", file=out)
    return await _record(events, [(control, kind)], actor=who, at=now, err=err)


async def remove(store: ControlStore, events: EventSink, *, kind: Kind | None,
                 selector: Selector | None, control_id: str | None, who: str, now: float,
                 out: TextIO, err: TextIO) -> int:
    """Lift controls: the one `control_id` names, or those of `kind` whose selector is
    exactly `selector` (every stop for `start`)."""
    found = [c for c in await store.all() if c.active(now)]
    if control_id is not None:
        chosen = [c for c in found if c.id == control_id and (kind is None or c.kind == kind)]
    else:
        chosen = [c for c in found if c.kind == kind
                  and (selector is None or c.selector == selector)]
    action = {"pause": "resume", "stop": "start"}.get(kind or "", "cancel")
    if not chosen:
        what = f"control {control_id}" if control_id else \
            f"{kind} of {selector.describe() if selector else 'anything'}"
        same = [c for c in found if kind is None or c.kind == kind]
        print(f"no {what} in force" + (": in force are\n" + "\n".join(
            f"  {c.id}: {describe(c, now=now)}" for c in same) if same else ""), file=err)
        return 0 if kind == "stop" else 1
    removed = []
    for control in chosen:
        if await store.remove(control.id) is not None:
            removed.append(control)
            print(f"{control.id}: lifted: {describe(control, now=now)}", file=out)
    return await _record(events, [(c, action) for c in removed], actor=who, at=now, err=err)


async def list_controls(store: ControlStore, *, now: float, as_json: bool,
                        include_lapsed: bool, out: TextIO) -> int:
    controls = sorted((c for c in await store.all() if include_lapsed or c.active(now)),
                      key=lambda c: (c.created_at, c.id))
    if as_json:
        print(json.dumps([{**c.as_dict(), "created": rfc3339_ms(c.created_at),
                           "expires": rfc3339_ms(c.expires_at) if c.expires_at else None,
                           "active": c.active(now)} for c in controls], indent=2), file=out)
        return 0
    rows = [("ID", "KIND", "SELECTOR", "WHO", "CREATED", "EXPIRES", "REASON")]
    rows += [(c.id, c.kind, c.selector.describe(), c.who, _when(c.created_at),
              (_when(c.expires_at) if c.expires_at is not None else "never")
              + ("" if c.active(now) else " (lapsed)"), c.reason) for c in controls]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1], file=out)
    print(f"{len(controls)} controls in force" if not include_lapsed
          else f"{len(controls)} controls", file=out)
    return 0


def describe(control: Control, *, now: float) -> str:
    until = "until lifted" if control.expires_at is None else \
        f"until {_when(control.expires_at)} ({max(0, round(control.expires_at - now))}s)"
    what = {"pause": "pause", "bounce": "admin bounce", "stop": "STOP of all sending"}
    reason = f"; reason: {control.reason}" if control.reason else ""
    target = "" if control.kind == "stop" else f" of {control.selector.describe()}"
    return f"{what[control.kind]}{target} {until}, by {control.who}{reason}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
