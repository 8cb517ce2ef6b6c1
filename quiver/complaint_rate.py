"""The complaint rate's two counts as CloudWatch EMF: `delivered` (the sender) and
`complaints` (the FBL intake), per (tenant, campaign, provider).

Both are written with the same dimension sets, finest first, so metric math can
divide one by the other at each level: per (tenant, campaign, provider) for
dashboards and ranking, per tenant, per provider and fleet-wide (no dimension) for
alarms. An alarm's math may reference at most 10 metrics, so the coarse sets are
written here rather than summed from the fine ones later. Every set is a metric of
its own in CloudWatch, billed as one; each distinct campaign adds a few, which is
why tenant and campaign stop at the finest set and the envelope bounds their
spelling (1-128 characters of [A-Za-z0-9._:@/+-]).

Documents are aggregated per flush: one per (tenant, campaign, provider) seen since
the last flush, carrying that key's count, never one per message. Namespace
`Quiver`; a missing tenant, campaign or provider is `none`. The sender's
`delivered` per (pool, provider) documents are apart from these (quiver.sender.metrics)
and unchanged: the same metric name under other dimensions is another metric.

Written as JSON (quiver.emf) rather than through Powertools' metrics, which add a
`service` dimension to every set wherever POWERTOOLS_SERVICE_NAME is set (the intake
Lambdas): the intake's sets would then differ from the sender's, and the math would
divide metrics that never meet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO

from quiver.emf import COUNT, document

NAMESPACE: Final = "Quiver"
DELIVERED: Final = "delivered"
COMPLAINTS: Final = "complaints"
RateMetric = Literal["delivered", "complaints"]
# The dimension value for a message without a tenant or campaign, or a recipient whose
# MX matches no provider of the policy.
UNKNOWN: Final = "none"
TENANT, CAMPAIGN, PROVIDER = "tenant", "campaign", "provider"
DIMENSION_SETS: Final[tuple[tuple[str, ...], ...]] = (
    (TENANT, CAMPAIGN, PROVIDER), (TENANT,), (PROVIDER,), (),
)


@dataclass(frozen=True, slots=True, order=True)
class RateKey:
    """What one delivery or complaint counts against."""

    tenant: str
    campaign: str
    provider: str

    @classmethod
    def of(cls, *, tenant: str | None, campaign: str | None,
           provider: str | None) -> RateKey:
        return cls(tenant or UNKNOWN, campaign or UNKNOWN, provider or UNKNOWN)


class RateCounts:
    """Counts of one metric by RateKey, written as EMF documents at each flush."""

    def __init__(self, metric: RateMetric, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.metric = metric
        self._clock = clock
        self._counts: Counter[RateKey] = Counter()

    def count(self, key: RateKey, n: int = 1) -> None:
        self._counts[key] += n

    def documents(self) -> list[dict[str, Any]]:
        """One EMF document per key counted since the last call; the counts restart."""
        counts, self._counts = self._counts, Counter()
        at = int(self._clock() * 1000)
        return [_document(self.metric, key, n, at) for key, n in sorted(counts.items())]

    def flush(self, out: TextIO) -> int:
        """Write the documents, one JSON line each; returns how many."""
        docs = self.documents()
        for doc in docs:
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        return len(docs)


def _document(metric: str, key: RateKey, n: int, at: int) -> dict[str, Any]:
    return document(
        at_ms=at, values={metric: (n, COUNT)}, dimension_sets=DIMENSION_SETS,
        dimensions={TENANT: key.tenant, CAMPAIGN: key.campaign, PROVIDER: key.provider})
