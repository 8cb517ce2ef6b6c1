"""EMF outcome metrics: one document per (event, pool, provider), counts summed, and
`delivered` per (tenant, campaign, provider) for the complaint rate."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from quiver.sender.metrics import NAMESPACE, OutcomeMetrics


def pool_documents(text: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in text.splitlines()]
    return [d for d in docs if "pool" in d]


def test_counts_are_grouped_and_flushed_as_emf() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out)
    metrics.count([{"event": "delivered", "pool": "p", "provider": "google"}] * 3
                  + [{"event": "bounced", "pool": "p", "provider": None}])
    # Two per (event, pool, provider), one per (tenant, campaign, provider) delivered to.
    assert metrics.flush() == 3
    docs = pool_documents(out.getvalue())
    by_name = {d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: d for d in docs}
    assert by_name["delivered"]["delivered"] == [3.0]
    assert by_name["delivered"]["provider"] == "google"
    assert by_name["bounced"]["provider"] == "none"
    for d in docs:
        spec = d["_aws"]["CloudWatchMetrics"][0]
        assert spec["Namespace"] == NAMESPACE
        assert spec["Dimensions"] == [["pool", "provider"]]
    assert metrics.flush() == 0  # nothing new since the last flush


def test_delivered_is_also_counted_per_tenant_campaign_and_provider() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out, clock=lambda: 1_790_000_000.0)
    acme = {"event": "delivered", "pool": "p", "provider": "google", "tenant": "acme",
            "campaign": "december"}
    metrics.count([acme] * 1000 + [
        {**acme, "pool": "q"},  # another pool: the same (tenant, campaign, provider)
        {"event": "delivered", "pool": "p", "provider": None, "tenant": None,
         "campaign": None},
        {**acme, "event": "bounced"},  # not the complaint rate's denominator
    ])
    metrics.flush()
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    rate = [d for d in docs if "pool" not in d]
    # Aggregated per flush: one document per key, never one per message.
    assert [(d["tenant"], d["campaign"], d["provider"], d["delivered"]) for d in rate] == [
        ("acme", "december", "google", 1001), ("none", "none", "none", 1)]
    for d in rate:
        assert d["_aws"]["Timestamp"] == 1_790_000_000_000
        assert d["_aws"]["CloudWatchMetrics"] == [{
            "Namespace": NAMESPACE,
            "Dimensions": [["tenant", "campaign", "provider"], ["tenant"], ["provider"], []],
            "Metrics": [{"Name": "delivered", "Unit": "Count"}]}]
    # The (pool, provider) documents count the same deliveries, as before.
    pools = {(d["pool"], d["provider"]): d["delivered"] for d in pool_documents(out.getvalue())
             if "delivered" in d}
    assert pools == {("p", "google"): [1000.0], ("q", "google"): [1.0], ("p", "none"): [1.0]}


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
