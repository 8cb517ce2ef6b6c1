"""The fleet's status as text: a task table, then the queue table (what `quiver
status` prints and `quiver top` redraws)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from quiver.adaptive.change import ACTOR
from quiver.status.fleet import Fleet

TASK_HEADER = ("TASK", "BEAT", "POLICY", "SHARE", "MSGS", "JOBS", "CONNS", "LOOP")
QUEUE_HEADER = ("SOURCE", "SITE", "DEPTH", "RCPTS", "CONNS", "DEFER%", "STATE", "WHY / LAST ERROR")
SORTS = {"depth": "depth", "deferrals": "deferral rate"}


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}s"


def _share(value: Any) -> str:
    share = float(value or 1.0)
    return f"1/{round(1 / share)}" if share > 0 else "-"


def _table(rows: list[tuple[str, ...]], *, right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def task_rows(fleet: Fleet) -> list[str]:
    rows: list[tuple[str, ...]] = [TASK_HEADER]
    for snap in fleet.tasks:
        policy = snap.get("policy", {})
        inflight = snap.get("inflight", {})
        rows.append((
            str(snap["task"]), _seconds(snap.get("heartbeat_age")),
            f"v{policy.get('version', '?')} {(policy.get('digest') or '')[:8]}".rstrip(),
            _share(snap.get("share")), str(inflight.get("messages", 0)),
            str(inflight.get("jobs", 0)), str(inflight.get("connections", 0)),
            _seconds(snap.get("loop_age")),
        ))
    return _table(rows, right={1, 3, 4, 5, 6, 7})


def _why(queue: dict[str, Any]) -> str:
    parts = []
    if queue.get("why"):
        parts.append(str(queue["why"]))
    if queue.get("until"):
        parts.append(f"until {queue['until']}")
    error = queue.get("last_error")
    if error is not None and not parts:
        parts.append(f"last: {error['code']} {error.get('enhanced') or ''} "
                     f"{error['text']}".replace("  ", " "))
    return "; ".join(parts) or "-"


def adaptive_rate_line(rate: dict[str, Any]) -> str:
    """`adaptive rate: local1 x google 20/s (static 40/s) since ...: why [rule]`."""
    return (f"adaptive rate: {rate.get('source')} x {rate.get('provider')} "
            f"{float(rate.get('rate', 0)):g}/s (static {float(rate.get('static_max', 0)):g}/s, "
            f"{rate.get('action')}) since {rate.get('since')}: {rate.get('reason')} "
            f"[rule {rate.get('rule')}]")


def adaptive_suspension_line(control: dict[str, Any]) -> str:
    what = " ".join(f"{k}={v}" for k, v in (control.get("selector") or {}).items())
    until = control.get("expires_at")
    when = "" if until is None else " until " + datetime.fromtimestamp(
        float(until), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"adaptive suspension: {what}{when}: {control.get('reason') or '-'}"


def queue_rows(queues: list[dict[str, Any]]) -> list[str]:
    rows: list[tuple[str, ...]] = [QUEUE_HEADER]
    for q in queues:
        rows.append((
            str(q["source"]), str(q["site"]), str(q["depth"]), str(q["recipients"]),
            str(q["connections"]), f"{100 * float(q['deferral_rate']):.1f}",
            str(q["state"]), _why(q),
        ))
    return _table(rows, right={2, 3, 4, 5})


def render(fleet: Fleet, *, queues: list[dict[str, Any]] | None = None,
           max_queues: int | None = None, width: int | None = None) -> list[str]:
    """The lines to show; `queues` in the order wanted (default: the fleet's, by
    depth), at most `max_queues` of them, each line cut to `width`."""
    shown = fleet.queues if queues is None else queues
    hidden = 0
    if max_queues is not None and len(shown) > max_queues:
        hidden = len(shown) - max_queues
        shown = shown[:max(0, max_queues)]
    lines = [f"{len(fleet.tasks)} live sender task(s), {fleet.stale} stale; "
             f"{len(fleet.queues)} ready queue(s)"]
    if fleet.tasks:
        lines += ["", *task_rows(fleet)]
    for task, why in sorted(fleet.unreadable.items()):
        lines.append(f"task {task}: {why}")
    for node, why in sorted(fleet.proxies_down.items()):
        lines.append(f"proxy {node} DOWN: {why or 'unknown'}")
    for control in fleet.controls:
        if control.get("who") == ACTOR:
            lines.append(adaptive_suspension_line(control))
        else:
            lines.append(f"control: {json.dumps(control, sort_keys=True)}")
    lines += [adaptive_rate_line(rate) for rate in fleet.adaptive_rates]
    lines += ["", *queue_rows(shown)]
    if hidden:
        lines.append(f"... {hidden} more queue(s)")
    if fleet.queues_omitted:
        lines.append(f"({fleet.queues_omitted} queue(s) left out of the tasks' records: "
                     "each lists its deepest only)")
    if width is not None:
        lines = [line[:width] for line in lines]
    return lines
