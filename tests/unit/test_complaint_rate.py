"""The complaint rate's two counts: the sender's `delivered` and the FBL intake's
`complaints` land in metrics of the same dimensions at every level, so CloudWatch's
math can divide one by the other; and each document is valid EMF."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from quiver.complaint_rate import (
    COMPLAINTS,
    DELIVERED,
    DIMENSION_SETS,
    NAMESPACE,
    RateCounts,
    RateKey,
)
from quiver.intake.counts import IntakeCounts, Outcome
from quiver.sender.metrics import OutcomeMetrics

# EMF: at most 30 keys in a dimension set, a dimension value at most 1024 characters.
MAX_DIMENSION_KEYS = 30
MAX_DIMENSION_VALUE = 1024


def documents(text: str, metric: str) -> list[dict[str, Any]]:
    """The complaint rate's documents of `metric` (not the same metric name under the
    per-pool or per-source dimensions)."""
    docs = [json.loads(line) for line in text.splitlines() if line]
    return [d for d in docs
            if d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == metric
            and d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0] == [
                "tenant", "campaign", "provider"]]


def identities(doc: dict[str, Any]) -> set[tuple[tuple[str, str], ...]]:
    """The metrics (by dimensions) a document adds its value to, one per set."""
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    return {tuple((name, doc[name]) for name in names) for names in directive["Dimensions"]}


def assert_valid_emf(doc: dict[str, Any], metric: str) -> None:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Metrics"] == [{"Name": metric, "Unit": "Count"}]
    assert isinstance(doc["_aws"]["Timestamp"], int)
    for names in directive["Dimensions"]:
        assert len(names) <= MAX_DIMENSION_KEYS
        for name in names:
            value = doc[name]
            assert isinstance(value, str) and 0 < len(value) <= MAX_DIMENSION_VALUE
    assert isinstance(doc[metric], int) and doc[metric] > 0


@pytest.mark.parametrize(("tenant", "campaign", "provider"), [
    ("acme", "december", "google"),
    (None, None, None),
    ("acme", None, "yahoo"),
])
def test_a_delivery_and_its_complaint_count_in_metrics_of_the_same_dimensions(
        tenant: str | None, campaign: str | None, provider: str | None) -> None:
    sender_out, intake_out = io.StringIO(), io.StringIO()
    sender = OutcomeMetrics(out=sender_out)
    sender.count([{"event": "delivered", "pool": "marketing", "provider": provider,
                   "tenant": tenant, "campaign": campaign}])
    sender.flush()
    intake = IntakeCounts()
    intake.count(Outcome("complaint", "accepted", "trusted_dkim", complaint=RateKey.of(
        tenant=tenant, campaign=campaign, provider=provider)))
    intake.flush(intake_out)

    (delivered,) = documents(sender_out.getvalue(), DELIVERED)
    (complained,) = documents(intake_out.getvalue(), COMPLAINTS)
    assert_valid_emf(delivered, DELIVERED)
    assert_valid_emf(complained, COMPLAINTS)
    assert identities(delivered) == identities(complained)
    assert len(identities(delivered)) == len(DIMENSION_SETS)
    # The coarsest set is fleet-wide: one metric that every document adds to.
    assert () in identities(delivered)


def test_documents_are_aggregated_per_flush_and_counts_restart() -> None:
    counts = RateCounts(COMPLAINTS, clock=lambda: 1.5)
    key = RateKey("acme", "december", "google")
    for _ in range(5000):
        counts.count(key)
    counts.count(RateKey("acme", "spring", "google"), 3)
    out = io.StringIO()
    assert counts.flush(out) == 2
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["campaign"], d[COMPLAINTS]) for d in docs] == [("december", 5000),
                                                             ("spring", 3)]
    assert all(d["_aws"]["Timestamp"] == 1500 for d in docs)
    assert counts.flush(io.StringIO()) == 0


def test_missing_tenant_campaign_and_provider_are_none() -> None:
    assert RateKey.of(tenant=None, campaign="", provider=None) == RateKey("none", "none",
                                                                         "none")
