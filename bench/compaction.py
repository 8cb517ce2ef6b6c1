"""The hourly compaction on a demo's events: objects and bytes before and after, and
the same queries over both layouts with DuckDB.

    .venv/bin/python bench/compaction.py [--events DIR] [--messages N] [--runs R]

Without --events it runs `quiver demo --messages N --keep <tmp>` first. The kept raw
objects are uploaded unchanged to a moto server on loopback, compacted there by the
Lambda's code (quiver.analytics.compaction) as if their hours had closed, and both
layouts are downloaded with `quiver events download`'s code. Each query runs R
times per layout on a fresh connection; the figures are medians. Nothing here passes
or fails on time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from quiver.analytics.columns import event_columns
from quiver.analytics.compaction import GRACE, Compactor
from quiver.analytics.download import download
from quiver.analytics.duck import connect, run
from quiver.analytics.saved import saved_queries
from quiver.devstack import moto_server

COUNT = "SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY event"


def hour_of(path: Path) -> datetime:
    return datetime.strptime(f"{path.parent.parent.name[5:]} {path.parent.name[5:]}",
                             "%Y-%m-%d %H").replace(tzinfo=UTC)


def timed(root: Path, layout: str, sql: str, runs: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        with connect(root, layout) as con:  # type: ignore[arg-type]
            _, result = run(con, sql)
        times.append(time.perf_counter() - started)
        rows = len(result)
    return statistics.median(times) * 1000, rows


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--events", type=Path, help="a folder kept by `quiver demo --keep`")
    args.add_argument("--messages", type=int, default=1000)
    args.add_argument("--runs", type=int, default=5)
    opts = args.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quiver-bench-compaction-"))
    events = opts.events
    if events is None:
        events = work / "kept"
        subprocess.run([sys.executable, "-m", "quiver", "demo", "--messages",
                        str(opts.messages), "--json", "--dir", str(work / "demo"),
                        "--keep", str(events)], check=True, stdout=subprocess.DEVNULL)
    raw = sorted(events.rglob("*.jsonl.gz"))
    server = moto_server.start_moto(log_dir=work)
    try:
        s3 = moto_server.client(server.endpoint, "s3")
        bucket = "bench-events"
        s3.create_bucket(Bucket=bucket)
        for path in raw:
            s3.put_object(Bucket=bucket, Key=str(path.relative_to(events)),
                          Body=path.read_bytes())
        hours = sorted({hour_of(p) for p in raw})
        now = hours[-1] + timedelta(hours=1) + GRACE
        started = time.perf_counter()
        result = Compactor(s3=s3, bucket=bucket, columns=event_columns()).run(
            now=now, lookback_hours=len(hours) + 1)
        compact_s = time.perf_counter() - started
        both = work / "both"
        download(s3, bucket=bucket, to=both)
    finally:
        server.stop()
    done = [h for h in result.hours if h.outcome == "compacted"]
    parquet = sorted(both.rglob("*.parquet"))
    print(f"hours {', '.join(h.strftime('%Y-%m-%dT%H') for h in hours)}; "
          f"{len(done)} event-type hours compacted in {compact_s:.2f} s "
          f"(failed {len(result.failed)})")
    print(f"raw       {len(raw):>5} objects {sum(p.stat().st_size for p in raw):>9} bytes "
          f"{sum(h.records for h in done):>7} records")
    print(f"compacted {len(parquet):>5} objects {sum(p.stat().st_size for p in parquet):>9} "
          f"bytes (Parquet, zstd)")
    print(f"\nDuckDB, median of {opts.runs} runs each (connect + view + query):")
    print(f"{'query':<24}{'raw ms':>9}{'rows':>6}{'compacted ms':>14}{'rows':>6}")
    queries = {"count_by_event": COUNT}
    queries.update({q.name: q.text("duckdb") for q in saved_queries().values()
                    if not q.params})
    for name, sql in queries.items():
        raw_ms, raw_rows = timed(both, "raw", sql, opts.runs)
        com_ms, com_rows = timed(both, "compacted", sql, opts.runs)
        print(f"{name:<24}{raw_ms:>9.1f}{raw_rows:>6}{com_ms:>14.1f}{com_rows:>6}")
    return 0 if not result.failed else 1


if __name__ == "__main__":
    sys.exit(main())
