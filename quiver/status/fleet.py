"""The fleet's status from the senders table: each live task's record, and its
ready queues summed per (source, site) across tasks.

A task is live while its heartbeat is younger than the `stale` it wrote (the
same bound membership uses for throttle shares). Records that cannot be read
are reported by task, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quiver.status.record import STATES, RecordError, decode
from quiver.storage.dynamo import SenderItem

# A task that wrote no `stale` (an older sender) is live this long after its beat.
DEFAULT_STALE = 30.0


@dataclass(slots=True)
class Fleet:
    # Live tasks' snapshots, by task id order.
    tasks: list[dict[str, Any]] = field(default_factory=list)
    # Queues summed per (source, site), deepest first.
    queues: list[dict[str, Any]] = field(default_factory=list)
    # Queues some task left out of its record (it lists its deepest only).
    queues_omitted: int = 0
    # Proxy nodes that some live task sees down: node -> why.
    proxies_down: dict[str, str] = field(default_factory=dict)
    # Active controls as the tasks report them, each once.
    controls: list[dict[str, Any]] = field(default_factory=list)
    # The adaptive engine's rates below their static limit, per (source, provider):
    # the newest record any task reports (tasks learn of a change a poll apart).
    adaptive_rates: list[dict[str, Any]] = field(default_factory=list)
    # Live tasks without a readable record: task id -> why.
    unreadable: dict[str, str] = field(default_factory=dict)
    # Tasks whose heartbeat is past their stale bound (left out).
    stale: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "queues": self.queues,
                "queues_omitted": self.queues_omitted, "proxies_down": self.proxies_down,
                "controls": self.controls, "adaptive_rates": self.adaptive_rates,
                "unreadable": self.unreadable, "stale": self.stale}


def aggregate(items: Sequence[SenderItem], *, now: float) -> Fleet:
    fleet = Fleet()
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    seen_controls: set[str] = set()
    rates: dict[tuple[str, str], dict[str, Any]] = {}
    for item in sorted(items, key=lambda i: i.task_id):
        if now - item.heartbeat > (item.stale or DEFAULT_STALE):
            fleet.stale += 1
            continue
        if item.status is None:
            fleet.unreadable[item.task_id] = "no status record (a sender without one)"
            continue
        try:
            snap = decode(item.status)
        except RecordError as exc:
            fleet.unreadable[item.task_id] = str(exc)
            continue
        snap["heartbeat_age"] = round(max(0.0, now - item.heartbeat), 1)
        fleet.tasks.append(snap)
        fleet.queues_omitted += int(snap.get("queues_omitted", 0))
        for proxy in snap.get("proxies", []):
            if not proxy.get("healthy", True):
                fleet.proxies_down.setdefault(proxy["node"], proxy.get("why") or "")
        for control in snap.get("controls", []):
            key = repr(sorted(control.items()))
            if key not in seen_controls:
                seen_controls.add(key)
                fleet.controls.append(control)
        for rate in snap.get("adaptive", {}).get("rates", []):
            pair = (str(rate.get("source")), str(rate.get("provider")))
            if pair not in rates or rate.get("version", 0) > rates[pair].get("version", 0):
                rates[pair] = rate
        errors = {e["site"]: e for e in snap.get("last_errors", [])}
        for queue in snap.get("queues", []):
            _merge(merged, queue, snap["task"], errors.get(queue["site"]))
    for queue in merged.values():
        total = queue["delivered"] + queue["deferred"] + queue["bounced"]
        queue["deferral_rate"] = round(queue["deferred"] / total, 4) if total else 0.0
    fleet.queues = sort_queues(list(merged.values()), "depth")
    fleet.adaptive_rates = [rates[k] for k in sorted(rates)]
    return fleet


def _merge(merged: dict[tuple[str, str], dict[str, Any]], queue: dict[str, Any],
           task: str, error: dict[str, Any] | None) -> None:
    key = (queue["source"], queue["site"])
    into = merged.get(key)
    if into is None:
        into = merged[key] = {
            "source": queue["source"], "site": queue["site"],
            "provider": queue.get("provider"), "depth": 0, "recipients": 0,
            "connections": 0, "delivered": 0, "deferred": 0, "bounced": 0,
            "state": "idle", "tasks": 0, "why": None, "until": None, "last_error": None,
        }
    into["tasks"] += 1
    for name in ("depth", "recipients", "connections", "delivered", "deferred", "bounced"):
        into[name] += int(queue.get(name, 0))
    state = queue.get("state", "idle")
    # The most held-back state any task reports is the queue's (paused first).
    if _rank(state) < _rank(into["state"]):
        into["state"] = state
        into["why"] = queue.get("why") or queue.get("held_by")
        into["until"] = queue.get("until")
    if error is not None and (into["last_error"] is None or error["at"] > into["last_error"]["at"]):
        into["last_error"] = {**error, "task": task}


def _rank(state: str) -> int:
    return STATES.index(state) if state in STATES else len(STATES)


def sort_queues(queues: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Deepest first ("depth"), or highest deferral rate first ("deferrals");
    ties by depth, then name."""
    if by == "deferrals":
        return sorted(queues, key=lambda q: (-q["deferral_rate"], -q["depth"],
                                             q["source"], q["site"]))
    return sorted(queues, key=lambda q: (-q["depth"], -q["connections"],
                                         q["source"], q["site"]))
