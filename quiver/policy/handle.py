"""The policy in force, shared by every component that reads a live section.

A reload (policy/reload.py: `merge_live` says which sections change live) replaces
the handle's policy and bumps its version; the readers of live sections (the
scheduler and its ready queues: retry backoff, throttles, TLS modes,
delivery.pipeline_next; the message handler: retry schedule, content rules) read
`current` at each decision, so none keeps a copy that a reload must reach.

Restart-only readers keep the policy they were built with, and say so where they
store it: the connector, the source picker, proxy health, the MX resolver and the
destination guard (sources, proxy nodes, routes, timeouts, allow_networks).
"""

from __future__ import annotations

from quiver.policy.model import Policy


class PolicyHandle:
    __slots__ = ("current", "version")

    def __init__(self, policy: Policy) -> None:
        self.current = policy
        # 1 at start-up, +1 per reload applied: which policy a decision saw.
        self.version = 1

    def update(self, policy: Policy) -> None:
        self.current = policy
        self.version += 1


def handle_of(policy: Policy | PolicyHandle) -> PolicyHandle:
    """`policy` itself if it is a handle, else a new one of its own (a component built
    alone, as in tests and tools)."""
    return policy if isinstance(policy, PolicyHandle) else PolicyHandle(policy)
