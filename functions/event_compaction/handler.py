"""Event compaction Lambda: on its hourly EventBridge schedule, compacts the closed
hours of the events bucket into Parquet (quiver.analytics.compaction).

Thin by design: it reads the schedule's time (so a retried invocation works on the
same hours), hands the work to `Compactor`, and fails the invocation if an hour
failed, so the failure shows in the function's error metric; the hours that
succeeded stay done, and the next run retries the rest.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from quiver.analytics.columns import event_columns
from quiver.analytics.compaction import LOOKBACK_HOURS, Compactor, now_utc
from quiver.settings import EXPORT_VARIABLES, deployment_from_env

logger = Logger(service="quiver-event-compaction")


class CompactionFailed(RuntimeError):
    """Some hours failed; the invocation fails so the error metric counts it."""


@functools.cache
def compactor() -> Compactor:
    deployment = deployment_from_env(os.environ, required=EXPORT_VARIABLES)
    s3 = boto3.session.Session(region_name=deployment.region).client("s3")
    return Compactor(s3=s3, bucket=deployment.events_bucket, columns=event_columns(),
                     duckdb_threads=int(os.environ.get("QUIVER_COMPACTION_THREADS", "2")),
                     memory_limit=os.environ.get("QUIVER_COMPACTION_MEMORY", "1GB"))


def scheduled_time(event: dict[str, Any]) -> datetime:
    """The schedule's own time (an EventBridge event's `time`); now if absent."""
    when = event.get("time")
    return datetime.fromisoformat(when.replace("Z", "+00:00")) if when else now_utc()


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    lookback = int(event.get("lookback_hours", LOOKBACK_HOURS))
    result = compactor().run(
        now=scheduled_time(event), lookback_hours=lookback,
        remaining=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    done = [h for h in result.hours if h.outcome == "compacted"]
    failed = [f"{p.path}: {why}" for p, why in result.failed]
    summary: dict[str, Any] = {
        "compacted": len(done),
        "unchanged": sum(1 for h in result.hours if h.outcome == "unchanged"),
        "input_objects": sum(h.inputs for h in done),
        "records": sum(h.records for h in done),
        "parts": sum(len(h.parts) for h in done),
        "deferred": len(result.deferred),
        "failed": failed,
    }
    logger.info("compaction run", extra=summary)
    if result.failed:
        raise CompactionFailed(f"{len(result.failed)} partitions failed: {failed[:3]}")
    return summary
