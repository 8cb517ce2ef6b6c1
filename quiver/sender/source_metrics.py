"""Outcomes and open connections per egress source (IP) and provider, as EMF.

The signals an operator reads to find which IP is in trouble at which provider: a
blocklisted source hides inside its pool's average. Counted like the pool metrics
(quiver.sender.metrics), when events become durable: `delivered`, `deferred` and
`bounced`, from the attempt's own fields (`source`, `provider`). Open connections
are sampled from the scheduler at each flush and written as `connection_seconds`
(connections times seconds since the previous flush): summed over a period and divided
by its length, it is the fleet's average open connections in that period, whatever
the number of tasks and however often they flush; a gauge per task would need every
task to write every key every time to be added up.

Aggregated per flush: one document per (source, provider) with anything to say, its
three outcome counts (zeros included, so the deferral rate's math finds all three)
and its connection-seconds. Bounded: a source not in the policy's `sources`, or a
provider not in its `[providers]`, is `none` (at most (sources + 1) * (providers + 1) keys).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

from quiver.emf import COUNT, SECONDS, document
from quiver.events import Record

SOURCE, PROVIDER = "source", "provider"
UNKNOWN: Final = "none"
OUTCOMES: Final = ("delivered", "deferred", "bounced")
CONNECTION_SECONDS: Final = "connection_seconds"

Key = tuple[str, str]
# Open connections per (source, provider) now; provider None when none matched.
Connections = Callable[[], Mapping[tuple[str, str | None], int]]


class SourceMetrics:
    def __init__(self, *, sources: Collection[str], providers: Collection[str],
                 connections: Connections | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._sources = frozenset(sources)
        self._providers = frozenset(providers)
        self._connections = connections
        self._clock = clock
        self._monotonic = monotonic
        self._sampled_at = monotonic()
        self._counts: dict[Key, Counter[str]] = {}

    def key(self, source: str | None, provider: str | None) -> Key:
        """The dimension values, bounded by the policy."""
        return (source if source in self._sources else UNKNOWN,
                provider if provider in self._providers else UNKNOWN)

    def count(self, records: Sequence[Record]) -> None:
        for r in records:
            event = r["event"]
            if event in OUTCOMES:
                key = self.key(r.get("source"), r.get("provider"))
                self._counts.setdefault(key, Counter())[event] += 1

    def documents(self) -> list[dict[str, Any]]:
        """One document per key with outcomes or open connections since the last
        call; the counts restart."""
        counts, self._counts = self._counts, {}
        now = self._monotonic()
        elapsed, self._sampled_at = max(0.0, now - self._sampled_at), now
        seconds: dict[Key, float] = {}
        if self._connections is not None:
            for (source, provider), n in self._connections().items():
                if n > 0:
                    key = self.key(source, provider)
                    seconds[key] = seconds.get(key, 0.0) + n * elapsed
        at = int(self._clock() * 1000)
        docs = []
        for key in sorted(counts.keys() | seconds.keys()):
            values: dict[str, tuple[float, str]] = {}
            if key in counts:
                values.update((name, (counts[key][name], COUNT)) for name in OUTCOMES)
            if key in seconds:
                values[CONNECTION_SECONDS] = (round(seconds[key], 3), SECONDS)
            docs.append(document(at_ms=at, dimensions={SOURCE: key[0], PROVIDER: key[1]},
                                 values=values))
        return docs
