"""EMF outcome metrics: one document per (event, pool, provider), counts summed."""

from __future__ import annotations

import asyncio
import io
import json

from quiver.sender.metrics import NAMESPACE, OutcomeMetrics


def test_counts_are_grouped_and_flushed_as_emf() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out)
    metrics.count([{"event": "delivered", "pool": "p", "provider": "google"}] * 3
                  + [{"event": "bounced", "pool": "p", "provider": None}])
    assert metrics.flush() == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    by_name = {d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: d for d in docs}
    assert by_name["delivered"]["delivered"] == [3.0]
    assert by_name["delivered"]["provider"] == "google"
    assert by_name["bounced"]["provider"] == "none"
    for d in docs:
        spec = d["_aws"]["CloudWatchMetrics"][0]
        assert spec["Namespace"] == NAMESPACE
        assert spec["Dimensions"] == [["pool", "provider"]]
    assert metrics.flush() == 0  # nothing new since the last flush


async def test_run_flushes_periodically_and_at_stop() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out, interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(metrics.run(stop))
    metrics.count([{"event": "deferred", "pool": "p", "provider": "x"}])
    # Flushed by the periodic timer, before any stop: wait for it (generous deadline).
    deadline = asyncio.get_running_loop().time() + 30
    while '"deferred"' not in out.getvalue():
        assert asyncio.get_running_loop().time() < deadline, "never flushed periodically"
        await asyncio.sleep(0.01)
    assert not task.done()
    metrics.count([{"event": "expired", "pool": "p", "provider": "x"}])
    stop.set()
    await task
    assert '"expired"' in out.getvalue()
