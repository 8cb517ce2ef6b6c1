"""EMF per egress source x provider: one document per key per flush with its three
outcome counts and its connection-seconds, dimensions bounded by the policy."""

from __future__ import annotations

import io
import json
from typing import Any

from quiver.sender.metrics import OutcomeMetrics
from quiver.sender.source_metrics import SourceMetrics

T0 = 1_790_000_000.0


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(connections: dict[tuple[str, str | None], int] | None = None,
         monotonic: Clock | None = None) -> SourceMetrics:
    return SourceMetrics(sources=("tx1", "tx2"), providers=("google", "yahoo"),
                         connections=(lambda: connections or {}) if connections is not None
                         else None,
                         clock=lambda: T0, monotonic=monotonic or Clock())


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["source"], d["provider"]): d for d in docs}


def test_outcomes_are_aggregated_per_source_and_provider_with_zeros() -> None:
    metrics = make()
    metrics.count([{"event": "delivered", "source": "tx1", "provider": "google"}] * 1000
                  + [{"event": "deferred", "source": "tx1", "provider": "google"}] * 7
                  + [{"event": "bounced", "source": "tx2", "provider": "yahoo"}])
    docs = metrics.documents()
    # One document per key, never one per message.
    assert len(docs) == 2
    tx1 = by_key(docs)[("tx1", "google")]
    assert (tx1["delivered"], tx1["deferred"], tx1["bounced"]) == (1000, 7, 0)
    tx2 = by_key(docs)[("tx2", "yahoo")]
    assert (tx2["delivered"], tx2["deferred"], tx2["bounced"]) == (0, 0, 1)
    for d in docs:
        (spec,) = d["_aws"]["CloudWatchMetrics"]
        assert spec["Namespace"] == "Quiver"
        assert spec["Dimensions"] == [["source", "provider"]]
        assert [m["Name"] for m in spec["Metrics"]] == ["delivered", "deferred", "bounced"]
        assert {m["Unit"] for m in spec["Metrics"]} == {"Count"}
        assert d["_aws"]["Timestamp"] == int(T0 * 1000)
    assert metrics.documents() == []  # nothing new since the last flush


def test_only_attempt_outcomes_are_counted() -> None:
    metrics = make()
    metrics.count([{"event": e, "source": "tx1", "provider": "google"}
                   for e in ("expired", "rejected", "failed", "suppressed", "complaint")])
    assert metrics.documents() == []


def test_sources_and_providers_outside_the_policy_are_none() -> None:
    metrics = make()
    metrics.count([{"event": "deferred", "source": f"stray{i}", "provider": f"p{i}.example"}
                   for i in range(500)]
                  + [{"event": "deferred", "source": None, "provider": None},
                     {"event": "delivered", "source": "tx2", "provider": "hotmail"}])
    keys = set(by_key(metrics.documents()))
    # 502 distinct spellings, two metrics: the policy bounds the cardinality.
    assert keys == {("none", "none"), ("tx2", "none")}


def test_open_connections_are_written_as_connection_seconds_since_the_last_flush() -> None:
    open_now: dict[tuple[str, str | None], int] = {("tx1", "google"): 3, ("tx2", None): 1,
                                                   ("tx2", "yahoo"): 0}
    monotonic = Clock(50.0)
    metrics = make(open_now, monotonic)
    monotonic.now += 10.0
    docs = by_key(metrics.documents())
    assert set(docs) == {("tx1", "google"), ("tx2", "none")}  # no document for 0
    assert docs[("tx1", "google")]["connection_seconds"] == 30.0
    assert docs[("tx2", "none")]["connection_seconds"] == 10.0
    (spec,) = docs[("tx1", "google")]["_aws"]["CloudWatchMetrics"]
    # Connections only: no outcome counts were invented for the key.
    assert spec["Metrics"] == [{"Name": "connection_seconds", "Unit": "Seconds"}]
    monotonic.now += 5.0
    open_now[("tx1", "google")] = 2
    metrics.count([{"event": "delivered", "source": "tx1", "provider": "google"}])
    doc = by_key(metrics.documents())[("tx1", "google")]
    assert (doc["delivered"], doc["connection_seconds"]) == (1, 10.0)


def test_the_outcome_flush_writes_the_source_documents_too() -> None:
    out = io.StringIO()
    metrics = OutcomeMetrics(out=out, sources=make())
    metrics.count([{"event": "delivered", "pool": "p", "provider": "google", "source": "tx1"}])
    # (event, pool, provider), (tenant, campaign, provider), (source, provider).
    assert metrics.flush() == 3
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    (source_doc,) = [d for d in docs if "source" in d]
    assert (source_doc["source"], source_doc["provider"], source_doc["delivered"]) == (
        "tx1", "google", 1)
