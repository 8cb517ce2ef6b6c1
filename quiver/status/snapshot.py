"""One sender task's live status as a JSON-ready dict: the policy in force, what it
holds in flight, every ready queue by (source, site) with its depth, connections,
state and recent outcomes, proxy health per node, active operator controls, and
the last failure per site.

Built on the event loop (it reads the scheduler's live objects, which only the
loop changes), in one pass with no awaits, so it is a consistent picture. Times
the scheduler keeps on its monotonic clock are shown as wall-clock RFC 3339
times: `wall() - (mono() - t)`.

Queue states, the first that holds:
- "paused": an operator control holds the queue (the `paused` hook; see below);
- "backing off": a connection failure or a 421 backed off the (source, site) until
  `until`, with `why`;
- "throttled": jobs wait and a limit holds them (`held_by`: "connections",
  "site connections" or "rate");
- "sending": jobs are queued or a connection is carrying one;
- "idle": nothing queued, no transaction under way (connections may be open,
  waiting for mail, until they time out).

Operator controls are another module's; the snapshot only takes hooks: `controls`
lists the active ones (each a JSON-ready dict) and `paused` says, for a queue's
destination, the reason it is paused, or None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quiver.policy.handle import PolicyHandle
from quiver.scheduler.health import ProxyHealth
from quiver.scheduler.outcomes import WINDOW
from quiver.scheduler.ready import ReadyQueue
from quiver.scheduler.scheduler import Scheduler
from quiver.scheduler.throttle import Destination
from quiver.status.record import VERSION

Controls = Callable[[], list[dict[str, Any]]]
Paused = Callable[[Destination], str | None]
# The adaptive engine's part: its adapted rates and the suspensions it put in force.
Adaptive = Callable[[], dict[str, Any]]
NO_ADAPTIVE: dict[str, Any] = {"enabled": False, "rates": [], "suspensions": []}


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


@dataclass(slots=True)
class StatusBoard:
    """What a snapshot reads. `inflight` and `share` are bound after the sender and
    the membership are built (wiring); until then they read as nothing held, 1/1."""

    task_id: str
    policy: PolicyHandle
    scheduler: Scheduler
    health: ProxyHealth | None = None
    policy_digest: Callable[[], str] | None = None
    inflight: Callable[[], tuple[int, int]] = lambda: (0, 0)
    share: Callable[[], float] = lambda: 1.0
    loop_age: Callable[[], float | None] = lambda: None
    controls: Controls | None = None
    paused: Paused | None = None
    adaptive: Adaptive | None = None
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        if not self.started:
            self.started = self.wall()

    def snapshot(self) -> dict[str, Any]:
        now, mono = self.wall(), self.mono()

        def at(t: float) -> str:
            return rfc3339(now - (mono - t))

        queues = [self._queue(q, mono, at) for q in self.scheduler.queues.values()]
        queues.sort(key=lambda q: (-q["depth"], -q["connections"], q["source"], q["site"]))
        messages, size = self.inflight()
        errors = sorted(self.scheduler.last_errors.items(), key=lambda e: -e[1].at)
        loop_age = self.loop_age()
        return {
            "v": VERSION,
            "task": self.task_id,
            "at": rfc3339(now),
            "started_at": rfc3339(self.started),
            "policy": {"version": self.policy.version,
                       "digest": self.policy_digest() if self.policy_digest else None},
            "share": round(self.share(), 6),
            "loop_age": None if loop_age is None else round(loop_age, 3),
            "inflight": {
                "messages": messages, "bytes": size,
                "jobs": sum(q["depth"] for q in queues),
                "connections": sum(q["connections"] for q in queues),
            },
            "outcome_window": WINDOW,
            "queues": queues,
            "queues_omitted": 0,
            "proxies": self._proxies(),
            "controls": self.controls() if self.controls is not None else [],
            "adaptive": self.adaptive() if self.adaptive is not None else NO_ADAPTIVE,
            "last_errors": [
                {"site": site, "at": at(e.at), "source": e.source, "code": e.code,
                 "enhanced": e.enhanced, "text": e.text}
                for site, e in errors
            ],
            "last_errors_omitted": 0,
        }

    def _queue(self, queue: ReadyQueue, mono: float,
               at: Callable[[float], str]) -> dict[str, Any]:
        counts = queue.outcomes.counts()
        out: dict[str, Any] = {
            "source": queue.source.name,
            "site": queue.route.site,
            "provider": queue.destination.provider,
            "depth": len(queue.jobs),
            "recipients": sum(len(j.recipients) for j in queue.jobs),
            "connections": queue.active,
            "idle": queue.idle,
            "delivered": counts.delivered,
            "deferred": counts.deferred,
            "bounced": counts.bounced,
            "deferral_rate": round(counts.deferral_rate, 4),
        }
        reason = self.paused(queue.destination) if self.paused is not None else None
        held = queue.held_by()
        if reason is not None:
            out.update(state="paused", why=reason)
        elif queue.backoff_until is not None and mono < queue.backoff_until:
            reply = queue.backoff_reply
            out.update(state="backing off", until=at(queue.backoff_until),
                       why=reply.text if reply is not None else None)
        elif held is not None:
            out.update(state="throttled", held_by=held)
        elif queue.jobs or queue.active > queue.idle:
            out["state"] = "sending"
        else:
            out["state"] = "idle"
        return out

    def _proxies(self) -> list[dict[str, Any]]:
        if self.health is None:
            return []
        return [{"node": node, "healthy": node not in self.health.down,
                 "why": self.health.why.get(node)}
                for node in self.health.nodes]
