"""Per-tenant connection counts and message rates for the SMTP listener.

In-process, per task: a tenant's limits are per listener task, so a deployment of
N tasks behind the load balancer admits up to N times them (the load balancer
spreads one tenant's connections across tasks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TenantCounters:
    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._connections: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    def open(self, tenant: str, limit: int | None) -> bool:
        """Take a connection slot for `tenant`; False (and none taken) at its limit."""
        current = self._connections.get(tenant, 0)
        if limit is not None and current >= limit:
            return False
        self._connections[tenant] = current + 1
        return True

    def close(self, tenant: str) -> None:
        left = self._connections.get(tenant, 0) - 1
        if left > 0:
            self._connections[tenant] = left
        else:
            self._connections.pop(tenant, None)

    def connections(self, tenant: str) -> int:
        return self._connections.get(tenant, 0)

    def take(self, tenant: str, rate: float | None) -> bool:
        """One message for `tenant` at `rate` per second (a token bucket holding one
        second's worth, at least one); False when the tenant is over it."""
        if rate is None:
            return True
        now = self._clock()
        capacity = max(1.0, rate)
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(tokens=capacity, at=now)
        bucket.tokens = min(capacity, bucket.tokens + max(0.0, now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True
