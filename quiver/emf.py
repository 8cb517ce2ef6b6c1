"""CloudWatch embedded metric format (EMF) documents, written as JSON lines.

Written here rather than through Powertools' metrics, which add a `service`
dimension to every set wherever POWERTOOLS_SERVICE_NAME is set: the alarms and the
scaling policy name exact dimension sets, and a metric with one more dimension is
another metric. One document carries several metrics of one set of dimension values;
CloudWatch Logs extracts each as a datapoint. Every EMF line Quiver writes (the
sender's metrics, the intakes' counts, the complaint rate) goes through here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TextIO

NAMESPACE: Final = "Quiver"
COUNT: Final = "Count"
SECONDS: Final = "Seconds"
NONE: Final = "None"  # EMF's unit for a plain number (a gauge, a 1/0 flag)


def document(*, at_ms: int, dimensions: Mapping[str, str],
             values: Mapping[str, tuple[float, str]],
             dimension_sets: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
    """One EMF document: `values` maps a metric name to (value, unit), all of them
    under the one dimension set `dimensions` (empty: a metric without dimensions), or
    under each of `dimension_sets` (names among `dimensions`; each set is a metric of
    its own in CloudWatch)."""
    sets = ([list(names) for names in dimension_sets] if dimension_sets is not None
            else [list(dimensions)])
    return {
        "_aws": {
            "Timestamp": at_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": sets,
                "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
            }],
        },
        **dimensions,
        **{name: value for name, (value, _) in values.items()},
    }


def write(out: TextIO, documents: Iterable[dict[str, Any]]) -> int:
    """Write the documents, one JSON line each; returns how many."""
    n = 0
    for doc in documents:
        out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        n += 1
    return n
