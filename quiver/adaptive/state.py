"""A (source, provider)'s adapted send rate as the cluster shares it.

One record per (source, provider) in the controls table (pk `adaptive-rate`, sk
`<source>|<provider>`), written with a version condition: a writer that read an old
version re-reads and decides again, so two senders that see the same throttle storm
cut the rate once, not twice. Every sender's controls poll reads the records and
paces its throttles by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RateAction = Literal["reduce", "raise", "floor"]


@dataclass(frozen=True, slots=True)
class RateState:
    source: str
    provider: str
    rate: float  # messages per second, cluster-wide
    static_max: float  # the throttle's max_rate when the record was written
    action: RateAction  # what last changed it
    rule: str  # the rule that cut it (kept through raises: the reason it is adapted)
    reason: str
    since: float  # epoch seconds of the last change
    reduced_at: float  # epoch seconds of the last reduce (at most one per window)
    version: int = 1

    @property
    def key(self) -> str:
        return f"{self.source}|{self.provider}"

    @property
    def adapted(self) -> bool:
        """Below the static limit: the adaptive engine holds it down."""
        return self.rate < self.static_max

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "provider": self.provider, "rate": self.rate,
                "static_max": self.static_max, "action": self.action, "rule": self.rule,
                "reason": self.reason, "since": self.since, "version": self.version}
