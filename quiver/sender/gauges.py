"""Per-task gauges, sampled at each metrics flush, as EMF: what the autoscaler and the
proxy-health alarms read.

- `held` and `sendable_now` (no dimensions): messages this task has in hand, and
  those of them not waiting on a connection limit, a rate, or a destination's
  backoff (the scheduler's `waiting_on_limits`). More tasks send `sendable_now`
  sooner; they do not send the rest sooner, since a cluster-wide limit is divided
  among the tasks, not multiplied. The scheduler counts its jobs (a message's
  recipients at one domain), the intake its messages: with several domains in one
  message the difference is an estimate, floored at 0. Every task writes one
  document per flush, so the metric's Average over a period is the mean per task.
- `proxy_node_healthy` (dimension `node`): 1 while this task's probes find the node's
  HAProxy serving (quiver.scheduler.health), 0 while it is marked down. Every task
  writes every node at every flush: the Average is the share of the fleet's
  observations that found it serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from quiver.emf import COUNT, NONE, document

HELD: Final = "held"
SENDABLE_NOW: Final = "sendable_now"
PROXY_NODE_HEALTHY: Final = "proxy_node_healthy"
NODE: Final = "node"


class TaskGauges:
    def __init__(self, *, held: Callable[[], int], waiting: Callable[[], int],
                 nodes: Sequence[str] = (), down: Callable[[], Collection[str]] = frozenset,
                 clock: Callable[[], float] = time.time) -> None:
        self._held = held
        self._waiting = waiting
        self._nodes = tuple(nodes)
        self._down = down
        self._clock = clock

    def documents(self) -> list[dict[str, Any]]:
        at = int(self._clock() * 1000)
        held = self._held()
        sendable = max(0, held - self._waiting())
        docs = [document(at_ms=at, dimensions={},
                         values={HELD: (held, COUNT), SENDABLE_NOW: (sendable, COUNT)})]
        down = self._down()
        docs += [document(at_ms=at, dimensions={NODE: node},
                          values={PROXY_NODE_HEALTHY: (0 if node in down else 1, NONE)})
                 for node in self._nodes]
        return docs
