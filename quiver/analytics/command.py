"""`quiver events`: copy the event objects to a folder, query them with DuckDB, and
run the hourly compaction by hand.

The bucket is `--bucket` or QUIVER_EVENTS_BUCKET; boto3 finds the endpoint and
credentials as usual, so after `source <stack dir>/env.sh` these commands reach the
local stack's moto server, and without it the real bucket.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from quiver.settings import ENV_EVENTS_BUCKET

# Widest a text column is printed in the table format; csv and json print it whole.
MAX_CELL = 60


def add_parser(sub: Any) -> None:
    p = sub.add_parser("events", help="the exported events: download, query (DuckDB), compact")
    esub = p.add_subparsers(dest="events_command", required=True)

    d = esub.add_parser("download", help="copy the bucket's event objects to a folder, "
                                         "keeping the key layout and the bytes")
    d.add_argument("--to", required=True, metavar="DIR", help="the folder to copy into")
    _bucket_argument(d)
    d.set_defaults(func=cmd_download)

    from quiver.analytics.duck import LAYOUTS

    q = esub.add_parser("query", help="run SQL (or a saved query) with DuckDB over a view "
                                      "`events` of a folder or the bucket")
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("sql", nargs="?", help="the SQL, reading the view `events`")
    what.add_argument("--saved", metavar="NAME", help="a saved query (--list names them)")
    what.add_argument("--list", action="store_true", help="list the saved queries")
    q.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a saved query's parameter; repeat for more")
    q.add_argument("--dir", metavar="DIR",
                   help="a folder in the bucket's layout (`quiver events download`, "
                        "`quiver demo --keep`); default: download the bucket first")
    _bucket_argument(q)
    q.add_argument("--layout", choices=LAYOUTS, default="raw",
                   help="raw: the export's gzip'd JSON lines, up to the minute (default); "
                        "compacted: the hourly Parquet")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (default, long cells cut), csv, or one JSON object a row")
    q.set_defaults(func=cmd_query)

    c = esub.add_parser("compact", help="compact the closed hours now, as the hourly "
                                        "Lambda does (a backfill, or the local stack)")
    _bucket_argument(c)
    c.add_argument("--now", metavar="TIME", help="RFC 3339 time to treat as now (default: "
                   "now); hours closed by then are compacted")
    c.add_argument("--lookback-hours", type=int, default=None, metavar="N",
                   help="how many closed hours to look at (default: the Lambda's)")
    c.set_defaults(func=cmd_compact)


def _bucket_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=None,
                   help=f"the events bucket (default: ${ENV_EVENTS_BUCKET})")


def _bucket(args: argparse.Namespace, where: str) -> str | None:
    bucket: str | None = args.bucket or os.environ.get(ENV_EVENTS_BUCKET)
    if not bucket:
        print(f"{where}: no bucket: pass --bucket or set {ENV_EVENTS_BUCKET} (for the "
              "local stack: source <its dir>/env.sh)", file=sys.stderr)
    return bucket


def _s3() -> Any:
    import boto3

    return boto3.session.Session().client("s3")


def cmd_download(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from quiver.analytics.download import UnsafeKey, download

    bucket = _bucket(args, "quiver events download")
    if bucket is None:
        return 2
    try:
        result = download(_s3(), bucket=bucket, to=Path(args.to))
    except (BotoCoreError, ClientError, UnsafeKey) as exc:
        print(f"quiver events download: {exc}", file=sys.stderr)
        return 1
    print(f"{result.objects} objects ({result.bytes} bytes) copied from s3://{bucket}/ to "
          f"{args.to}; {result.skipped} already there")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from quiver.analytics.saved import SavedQueryError, saved_queries

    where = "quiver events query"
    queries = saved_queries()
    if args.list:
        for entry in queries.values():
            usage = " ".join(f"--param {p}=..." for p in entry.params)
            print(f"{entry.name:<22} {entry.description}" + (f"  [{usage}]" if usage else ""))
        return 0
    params: dict[str, str] = {}
    for item in args.param:
        name, eq, value = item.partition("=")
        if not eq or not name:
            print(f"{where}: --param takes NAME=VALUE, not {item!r}", file=sys.stderr)
            return 2
        params[name] = value
    if args.saved:
        query = queries.get(args.saved)
        if query is None:
            print(f"{where}: no saved query {args.saved!r}; there are: {', '.join(queries)}",
                  file=sys.stderr)
            return 2
        try:
            bound: dict[str, str] | None = query.bind(params)
        except SavedQueryError as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            return 2
        sql = query.text("duckdb")
    else:
        sql, bound = args.sql, params or None
    if args.dir:
        return _query_folder(Path(args.dir), args, sql, bound)
    bucket = _bucket(args, where)
    if bucket is None:
        return 2
    from quiver.analytics.download import download

    with tempfile.TemporaryDirectory(prefix="quiver-events-") as tmp:
        download(_s3(), bucket=bucket, to=Path(tmp))
        return _query_folder(Path(tmp), args, sql, bound)


def _query_folder(root: Path, args: argparse.Namespace, sql: str,
                  params: dict[str, str] | None) -> int:
    import duckdb

    from quiver.analytics.duck import NoEvents, connect, run

    try:
        with connect(root, args.layout) as con:
            names, rows = run(con, sql, params)
    except NoEvents as exc:
        print(f"quiver events query: {exc}", file=sys.stderr)
        return 1
    except duckdb.Error as exc:
        print(f"quiver events query: {exc}", file=sys.stderr)
        return 1
    print_rows(names, rows, args.format)
    return 0


def print_rows(names: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            print(json.dumps(dict(zip(names, row, strict=True)), default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    print(f"({len(rows)} rows)")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def cmd_compact(args: argparse.Namespace) -> int:
    from quiver.analytics.columns import event_columns
    from quiver.analytics.compaction import LOOKBACK_HOURS, Compactor, now_utc

    where = "quiver events compact"
    bucket = _bucket(args, where)
    if bucket is None:
        return 2
    try:
        now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else now_utc()
    except ValueError:
        print(f"{where}: --now takes an RFC 3339 time, not {args.now!r}", file=sys.stderr)
        return 2
    if now.tzinfo is None:
        print(f"{where}: --now needs a time zone (e.g. ...Z)", file=sys.stderr)
        return 2
    compactor = Compactor(s3=_s3(), bucket=bucket, columns=event_columns())
    result = compactor.run(now=now, lookback_hours=args.lookback_hours or LOOKBACK_HOURS)
    for hour in result.hours:
        if hour.outcome != "empty":
            print(f"{hour.partition.path:<48} {hour.outcome:<10} {hour.inputs:>6} objects "
                  f"{hour.input_bytes:>10} B -> {len(hour.parts)} parts {hour.output_bytes:>10} B "
                  f"({hour.records} records)")
    for partition, why in result.failed:
        print(f"{partition.path}: FAILED: {why}", file=sys.stderr)
    return 1 if result.failed else 0
