"""Outcome counts as CloudWatch EMF metrics (Powertools), per pool and provider.

Counted when events become durable (the completer's flush), so a metric never
counts an outcome that a crash could still undo. Flushed to stdout every
`interval` seconds and at shutdown; on ECS the awslogs driver ships stdout to
CloudWatch Logs, which extracts the metrics. Namespace `Quiver`, metric names
= event types, dimensions `pool` and `provider` (`none` when unknown).

`delivered` is also counted per (tenant, campaign, provider), the complaint rate's
denominator (quiver.complaint_rate), with the dimensions the FBL intake gives its
numerator. The same flush writes the per-source documents (quiver.sender.source_metrics:
outcomes and connections per source x provider) and the task's gauges
(quiver.sender.gauges: sendable mail, proxy node health), when given.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TextIO

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from quiver import emf
from quiver.complaint_rate import DELIVERED, RateCounts, RateKey
from quiver.events import Record
from quiver.sender.gauges import TaskGauges
from quiver.sender.source_metrics import SourceMetrics

NAMESPACE = "Quiver"
FLUSH_INTERVAL = 10.0


class OutcomeMetrics:
    def __init__(self, *, out: TextIO | None = None, interval: float = FLUSH_INTERVAL,
                 clock: Callable[[], float] = time.time,
                 sources: SourceMetrics | None = None, gauges: TaskGauges | None = None) -> None:
        self.sources = sources
        self.gauges = gauges
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._delivered = RateCounts(DELIVERED, clock=clock)
        self._out = out
        self.interval = interval

    def count(self, records: Sequence[Record]) -> None:
        if self.sources is not None:
            self.sources.count(records)
        for r in records:
            self._counts[(r["event"], r.get("pool") or "none", r.get("provider") or "none")] += 1
            if r["event"] == DELIVERED:
                self._delivered.count(RateKey.of(tenant=r.get("tenant"),
                                                 campaign=r.get("campaign"),
                                                 provider=r.get("provider")))

    def flush(self) -> int:
        """Emit one EMF document per (event, pool, provider), one per (tenant,
        campaign, provider) delivered to, then the per-source documents and the
        gauges; returns how many."""
        counts, self._counts = self._counts, Counter()
        out = self._out or sys.stdout
        for (event, pool, provider), n in sorted(counts.items()):
            buffer = io.StringIO()
            # single_metric prints its EMF blob; capture it so it goes where we say.
            with contextlib.redirect_stdout(buffer), single_metric(
                name=event, unit=MetricUnit.Count, value=n, namespace=NAMESPACE,
            ) as metric:
                metric.add_dimension(name="pool", value=pool)
                metric.add_dimension(name="provider", value=provider)
            out.write(buffer.getvalue())
        written = self._delivered.flush(out)
        if self.sources is not None:
            written += emf.write(out, self.sources.documents())
        if self.gauges is not None:
            written += emf.write(out, self.gauges.documents())
        out.flush()
        return len(counts) + written

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            self.flush()
