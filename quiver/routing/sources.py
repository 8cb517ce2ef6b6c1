"""Egress choice: pool → source by smooth weighted round robin over healthy sources.

Smooth WRR (as nginx does) interleaves sources instead of sending runs of one, so a
receiving MX sees each pool's IPs mixed evenly at any time scale.
"""

from __future__ import annotations

from collections.abc import Collection

from quiver.policy import Policy, Source


class NoSourceAvailable(RuntimeError):
    pass


class SourcePicker:
    def __init__(self, policy: Policy) -> None:
        # Restart-only (policy/handle.py): a reload does not reach this copy.
        self._policy = policy
        self._current: dict[tuple[str, str], int] = {}
        self._down: dict[str, str] = {}  # source → why it is down

    def mark_down(self, source: str, why: str = "") -> None:
        self._down[source] = why

    def mark_up(self, source: str) -> None:
        self._down.pop(source, None)

    def pick(self, pool_name: str, *, avoid: Collection[str] = ()) -> Source:
        """The pool's next source, among those up and not in `avoid` (the caller's
        sources already tried and passed over for one delivery)."""
        pool = self._policy.pools.get(pool_name)
        if pool is None:
            raise NoSourceAvailable(f"unknown pool {pool_name!r}")
        candidates = [(s, w) for s, w in pool.sources if s not in self._down and s not in avoid]
        if not candidates:
            reasons = sorted({self._down[s] for s, _ in pool.sources if self._down.get(s)})
            detail = f" ({'; '.join(reasons)})" if reasons else ""
            if any(s in avoid for s, _ in pool.sources):
                raise NoSourceAvailable(f"no source of pool {pool_name!r} can take this "
                                        f"mail on this sender task{detail}")
            raise NoSourceAvailable(f"every source of pool {pool_name!r} is down{detail}")
        total = 0
        best: str | None = None
        best_value = 0
        for name, weight in candidates:
            key = (pool_name, name)
            value = self._current.get(key, 0) + weight
            self._current[key] = value
            total += weight
            if best is None or value > best_value:
                best, best_value = name, value
        assert best is not None
        self._current[(pool_name, best)] -= total
        return self._policy.sources[best]
