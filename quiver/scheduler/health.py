"""Proxy node health: probe each HAProxy node and steer sources away from dead ones.

A source whose node is unhealthy is skipped by the pool's weighted choice (its
pool continues on its other sources, in other AZs) and comes back once a probe
succeeds. A failed connect to a frontend marks the node down at once, without
waiting for the next probe, so mail never waits on a dead proxy past one
connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quiver.policy import Policy
from quiver.routing.proxy_probe import probe
from quiver.routing.sources import SourcePicker

log = logging.getLogger("quiver.sender")

PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 2.0


class ProxyHealth:
    def __init__(self, *, policy: Policy, picker: SourcePicker,
                 interval: float = PROBE_INTERVAL, timeout: float = PROBE_TIMEOUT) -> None:
        # Restart-only (policy/handle.py): a reload does not reach this copy.
        self._policy = policy
        self._picker = picker
        self.interval = interval
        self.timeout = timeout
        self.down: set[str] = set()
        # Why each node in `down` is down, for the live status.
        self.why: dict[str, str] = {}

    @property
    def nodes(self) -> list[str]:
        return list(self._policy.proxy.nodes)

    def _sources_of(self, node: str) -> list[str]:
        return [s.name for s in self._policy.sources.values() if s.node == node]

    def mark(self, node: str, healthy: bool, why: str = "") -> None:
        if healthy == (node not in self.down):
            return
        if healthy:
            self.down.discard(node)
            self.why.pop(node, None)
            log.info("proxy %s is healthy again; its sources are back in their pools", node)
        else:
            self.down.add(node)
            self.why[node] = why
            log.warning("proxy %s is down (%s); its sources are skipped", node, why)
        for source in self._sources_of(node):
            if healthy:
                self._picker.mark_up(source)
            else:
                self._picker.mark_down(source, f"proxy {node} is down: {why}")

    async def check(self, node: str) -> bool:
        """Probe one node now and record the result."""
        spec = self._policy.proxy.nodes[node]
        healthy = await probe(spec.address, self._policy.proxy.health_port, timeout=self.timeout)
        self.mark(node, healthy, "health probe failed")
        return healthy

    async def run(self, stop: asyncio.Event) -> None:
        nodes = list(self._policy.proxy.nodes)
        if not nodes:
            await stop.wait()
            return
        while not stop.is_set():
            await asyncio.gather(*(self.check(n) for n in nodes), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
