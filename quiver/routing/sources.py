"""Egress choice: pool → source by smooth weighted round robin over healthy sources.

Smooth WRR (as nginx does) interleaves sources instead of sending runs of one, so a
receiving MX sees each pool's IPs mixed evenly at any time scale.

A warming source (quiver.warmup) takes its weight's share until its cap for the
destination's provider is used up for the day; then it is passed over and the rest
of the pool carries the mail, so nothing waits behind a cap. With every source of the
pool capped, the mail is deferred (NoSourceAvailable) on the normal retry schedule.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from quiver.delivery import Attempt
from quiver.policy import Policy, Source
from quiver.warmup.gate import WarmupGate


class NoSourceAvailable(RuntimeError):
    pass


class SourcePicker:
    def __init__(self, policy: Policy, *, warmup: WarmupGate | None = None) -> None:
        # Restart-only (policy/handle.py): a reload does not reach this copy.
        self._policy = policy
        # None: no source is capped (no warming source, or a tool's sender).
        self.warmup = warmup
        self._current: dict[tuple[str, str], int] = {}
        self._down: dict[str, str] = {}  # source → why it is down

    def mark_down(self, source: str, why: str = "") -> None:
        self._down[source] = why

    def mark_up(self, source: str) -> None:
        self._down.pop(source, None)

    async def pick(self, pool_name: str, *, provider: str | None = None, recipients: int = 1,
                   avoid: Collection[str] = ()) -> Source:
        """The pool's next source for `recipients` recipients at `provider`, among those
        up, not in `avoid` (the caller's sources already tried and passed over for one
        delivery) and not capped by their warm-up today. A warming source's recipients
        are taken from its cap: what is not attempted goes back (`give_back`)."""
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
        capped: list[str] = []
        while candidates:
            best = self._next(pool_name, candidates)
            if self.warmup is None:
                return self._policy.sources[best]
            why = await self.warmup.take(best, provider, recipients)
            if why is None:
                return self._policy.sources[best]
            capped.append(why.why)
            candidates = [(s, w) for s, w in candidates if s != best]
        raise NoSourceAvailable(f"every source of pool {pool_name!r} that can take this "
                                f"mail is capped by its warm-up today: {'; '.join(capped)}")

    def give_back(self, source: str, provider: str | None, recipients: int) -> None:
        """Recipients picked for `source` and never attempted there."""
        if self.warmup is not None and recipients > 0:
            self.warmup.give_back(source, provider, recipients)

    def settle(self, source: str, provider: str | None, attempts: Sequence[Attempt]) -> None:
        """A delivery from `source` is done: what was not attempted goes back to its cap,
        and its outcomes count toward its warm-up day."""
        if self.warmup is None:
            return
        self.warmup.give_back(source, provider, sum(1 for a in attempts if not a.counts))
        self.warmup.record(source, attempts)

    def _next(self, pool_name: str, candidates: Sequence[tuple[str, int]]) -> str:
        """Smooth WRR's next pick among `candidates`."""
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
        return best
