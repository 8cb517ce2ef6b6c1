"""CloudWatch embedded metric format (EMF) documents, written as JSON lines.

Written here rather than through Powertools' metrics, which add a `service`
dimension to every dimension set wherever POWERTOOLS_SERVICE_NAME is set (the
Lambdas): a metric would then carry dimensions the README, the alarms and the same
metric from the sender do not, and the alarms would watch a metric nobody writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

NAMESPACE: Final = "Quiver"


def emf_document(*, metric: str, value: float, dimensions: Mapping[str, str],
                 at_ms: int, dimension_sets: Sequence[Sequence[str]] | None = None,
                 unit: str = "Count", namespace: str = NAMESPACE) -> dict[str, Any]:
    """One document for one metric value. `dimension_sets` defaults to one set of all
    `dimensions`; each set listed is a metric of its own in CloudWatch."""
    sets = [list(names) for names in dimension_sets] if dimension_sets is not None else [
        list(dimensions)]
    return {
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": sets,
                "Metrics": [{"Name": metric, "Unit": unit}],
            }],
        },
        **dimensions,
        metric: value,
    }
