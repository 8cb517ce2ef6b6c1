"""Hourly compaction: each closed hour's raw event objects, per event type, merged
into a few large Parquet objects for the compacted Glue table.

The export writes one small gzip'd JSONL object per batch, event type and hour
(quiver/export.py): at fleet rates, hundreds a second. Athena opens every object it
reads, so queries over days are slow and their GETs cost more than their scans. The
compaction rewrites a closed hour (its end plus GRACE, so late batches of the
export have landed) as parts of at most PART_INPUT_BYTES of raw input each, in
Parquet typed by the table's columns (quiver.analytics.columns).

Safe to re-run and to run twice at once:
- A part's key names its index and the hour's plan, a digest of the raw objects
  (key, size, ETag) and of the columns. The same inputs always give the same keys;
  different inputs (a batch that landed late) give new keys, never a mix.
- Each part is one PUT, so no reader sees half an object. The hour's manifest
  (layout.Partition.manifest_key) is written after every part, with a conditional
  write (If-None-Match / If-Match on the ETag read): of two runs, one records the
  hour and the other removes the parts it wrote that the manifest does not name.
- A run finding a manifest with the current plan does nothing. A changed plan (a
  late batch, a new column) compacts the hour again and, once its manifest is in
  place, deletes the older plan's parts. For the seconds in between, both plans'
  parts are in the table: a query over that hour then counts the late hour twice.
The raw objects stay: they are the landing zone, expired by a lifecycle rule of
their own (cdk/buckets.py), and the table to read for the hours not compacted yet.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError

from quiver.analytics.columns import Column, duckdb_columns
from quiver.analytics.layout import RAW_SUFFIX, Partition
from quiver.events import EVENT_TYPES

_log = logging.getLogger("quiver.compaction")

# An hour is closed this long after it ends: the export's batching window (30 s) and
# a few retries of a failed batch fit well inside it.
GRACE = timedelta(minutes=15)
# How far back each run looks for hours to compact or to compact again (a batch that
# arrived late). Older late batches stay in the raw table only; a run given
# `lookback_hours` in its event reaches further.
LOOKBACK_HOURS = 24
# Raw input per part. The export's objects compress JSON about 8:1, so a part holds
# roughly 1 GiB of JSON: a few hundred MB of DuckDB memory, and Parquet objects of
# tens of MB, the size Athena reads best.
PART_INPUT_BYTES = 128 * 1024 * 1024
# Concurrent GETs of raw objects: a part has thousands of small objects, and each GET
# waits on S3 far longer than it uses the CPU.
FETCH_THREADS = 16
# Stop starting hours when less than this remains of the invocation: the next run
# carries on where this one stopped.
RUN_MARGIN = timedelta(minutes=3)
MANIFEST_VERSION = 1
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
# What S3 answers a conditional write that lost (412), or that raced another (409).
_LOST_WRITE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})

Outcome = Literal["compacted", "unchanged", "empty", "superseded"]


@dataclass(frozen=True, slots=True)
class RawObject:
    key: str
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class Part:
    key: str
    records: int
    size: int


@dataclass(frozen=True, slots=True)
class HourResult:
    partition: Partition
    outcome: Outcome
    inputs: int = 0
    input_bytes: int = 0
    parts: tuple[Part, ...] = ()

    @property
    def records(self) -> int:
        return sum(p.records for p in self.parts)

    @property
    def output_bytes(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass
class RunResult:
    hours: list[HourResult] = field(default_factory=list)
    # Partitions not started because the invocation was running out of time.
    deferred: list[Partition] = field(default_factory=list)
    failed: list[tuple[Partition, str]] = field(default_factory=list)


def closed_hours(now: datetime, *, lookback_hours: int = LOOKBACK_HOURS,
                 grace: timedelta = GRACE) -> list[datetime]:
    """The starts of the hours (UTC) closed at `now`, newest first, `lookback_hours` of
    them."""
    newest_end = (now - grace).replace(minute=0, second=0, microsecond=0)
    return [newest_end - timedelta(hours=n) for n in range(1, lookback_hours + 1)]


def partitions_of(hour: datetime, event_types: Sequence[str] = EVENT_TYPES) -> list[Partition]:
    return [Partition(event=e, date=hour.strftime("%Y-%m-%d"), hour=hour.strftime("%H"))
            for e in event_types]


def plan_digest(inputs: Sequence[RawObject], columns: Sequence[Column]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([list(c) for c in columns]).encode())
    for obj in inputs:
        digest.update(f"\n{obj.key}\t{obj.size}\t{obj.etag}".encode())
    return digest.hexdigest()


def split_parts(inputs: Sequence[RawObject], limit: int = PART_INPUT_BYTES
                ) -> list[list[RawObject]]:
    """Consecutive runs of `inputs` of at most `limit` bytes (at least one object)."""
    parts: list[list[RawObject]] = []
    size = 0
    for obj in inputs:
        if not parts or (size + obj.size > limit and parts[-1]):
            parts.append([])
            size = 0
        parts[-1].append(obj)
        size += obj.size
    return parts


class Compactor:
    """Compacts partitions of `bucket` with the `s3` client, writing Parquet typed by
    `columns`; scratch files go under `workdir` (a Lambda's /tmp)."""

    def __init__(self, *, s3: Any, bucket: str, columns: Sequence[Column],
                 workdir: Path | None = None, part_input_bytes: int = PART_INPUT_BYTES,
                 fetch_threads: int = FETCH_THREADS, duckdb_threads: int = 2,
                 memory_limit: str = "1GB") -> None:
        self._s3 = s3
        self.bucket = bucket
        self._columns = tuple(columns)
        self._workdir = workdir
        self._part_input_bytes = part_input_bytes
        self._fetch_threads = fetch_threads
        self._duckdb_threads = duckdb_threads
        self._memory_limit = memory_limit

    def run(self, *, now: datetime, lookback_hours: int = LOOKBACK_HOURS,
            grace: timedelta = GRACE, remaining: Callable[[], float] | None = None
            ) -> RunResult:
        """Compact every closed hour in the lookback, newest first. `remaining` (seconds
        left of the invocation) stops the run before the Lambda's timeout would."""
        result = RunResult()
        pending = [p for hour in closed_hours(now, lookback_hours=lookback_hours, grace=grace)
                   for p in partitions_of(hour)]
        for index, partition in enumerate(pending):
            if remaining is not None and remaining() < RUN_MARGIN.total_seconds():
                result.deferred = pending[index:]
                break
            try:
                result.hours.append(self.compact(partition))
            except Exception as exc:
                # One hour that fails (a raw object that does not parse, a store error)
                # must not stop the others; it is tried again next run.
                _log.exception("compaction failed", extra={"partition": partition.path})
                result.failed.append((partition, f"{type(exc).__name__}: {exc}"))
        return result

    def compact(self, partition: Partition) -> HourResult:
        inputs = self._list(partition.raw_prefix)
        inputs = [o for o in inputs if o.key.endswith(RAW_SUFFIX)]
        if not inputs:
            return HourResult(partition, "empty")
        plan = plan_digest(inputs, self._columns)
        input_bytes = sum(o.size for o in inputs)
        manifest, etag = self._manifest(partition)
        if manifest is not None and manifest.get("plan") == plan:
            return HourResult(partition, "unchanged", len(inputs), input_bytes,
                              _parts_of(manifest))
        with tempfile.TemporaryDirectory(prefix="quiver-compact-", dir=self._workdir) as tmp:
            parts = tuple(self._write_part(partition, plan, i, chunk, Path(tmp))
                          for i, chunk in enumerate(split_parts(inputs, self._part_input_bytes)))
        body = json.dumps({
            "v": MANIFEST_VERSION, "event": partition.event, "date": partition.date,
            "hour": partition.hour, "plan": plan,
            "columns": [list(c) for c in self._columns],
            "inputs": [[o.key, o.size, o.etag] for o in inputs],
            "parts": [[p.key, p.records, p.size] for p in parts],
            "records": sum(p.records for p in parts),
        }, indent=None, separators=(",", ":")).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=partition.manifest_key, Body=body,
                                ContentType="application/json", **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _LOST_WRITE:
                raise
            # Another run recorded this hour meanwhile: its manifest stands, and what
            # this run wrote goes unless that manifest names it (the same plan).
            winner, _ = self._manifest(partition)
            kept = {p.key for p in _parts_of(winner)} if winner else set()
            self._delete([p.key for p in parts if p.key not in kept])
            return HourResult(partition, "superseded", len(inputs), input_bytes, parts)
        # The hour's manifest names these parts now: older plans' parts (an earlier
        # compaction of this hour, or a run that stopped before its manifest) go.
        named = {p.key for p in parts}
        self._delete([o.key for o in self._list(partition.compacted_prefix)
                      if o.key not in named])
        _log.info("compacted", extra={"partition": partition.path, "inputs": len(inputs),
                                      "parts": len(parts)})
        return HourResult(partition, "compacted", len(inputs), input_bytes, parts)

    def _write_part(self, partition: Partition, plan: str, index: int,
                    chunk: Sequence[RawObject], scratch: Path) -> Part:
        source = scratch / f"part-{index:05d}.jsonl.gz"
        target = scratch / f"part-{index:05d}.parquet"
        # Concatenated gzip members are one gzip stream (RFC 1952, 2.2): the raw bytes
        # go to DuckDB as they are, never decompressed here.
        with source.open("wb") as out:
            for data in self._fetch(chunk):
                out.write(data)
        records = self._to_parquet(source, target)
        key = partition.part_key(index, plan)
        with target.open("rb") as body:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                                ContentType=PARQUET_CONTENT_TYPE)
        size = target.stat().st_size
        source.unlink()
        target.unlink()
        return Part(key=key, records=records, size=size)

    def _to_parquet(self, source: Path, target: Path) -> int:
        import duckdb

        with duckdb.connect(":memory:", config=duckdb_config(
                threads=self._duckdb_threads, memory_limit=self._memory_limit,
                temp_directory=str(source.parent))) as con:
            names = ", ".join(f'"{name}"' for name, _ in self._columns)
            # The column names and types are the event schema's, the target a path
            # this process made (quoted); the raw file is a bound parameter.
            reader = (f"read_json(?, format='newline_delimited', compression='gzip', "
                      f"columns={duckdb_columns(tuple(self._columns))})")
            select = f'SELECT {names} FROM {reader} ORDER BY "at", "id", "rcpt"'  # noqa: S608
            copy = f"COPY ({select}) TO '{_sql_path(target)}' (FORMAT parquet, COMPRESSION zstd)"
            row = con.execute(copy, [str(source)]).fetchone()
        return int(row[0]) if row else 0

    def _fetch(self, chunk: Sequence[RawObject]) -> Iterator[bytes]:
        def get(obj: RawObject) -> bytes:
            data: bytes = self._s3.get_object(Bucket=self.bucket, Key=obj.key,
                                              IfMatch=obj.etag)["Body"].read()
            if data[:2] != b"\x1f\x8b":
                raise ValueError(f"{obj.key} is not gzip")
            return data

        with ThreadPoolExecutor(max_workers=self._fetch_threads) as pool:
            yield from pool.map(get, chunk)

    def _list(self, prefix: str) -> list[RawObject]:
        out: list[RawObject] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(RawObject(o["Key"], int(o["Size"]), str(o["ETag"]))
                       for o in page.get("Contents", []))
        return sorted(out, key=lambda o: o.key)

    def _manifest(self, partition: Partition) -> tuple[dict[str, Any] | None, str | None]:
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=partition.manifest_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None, None
            raise
        manifest: dict[str, Any] = json.loads(response["Body"].read())
        return manifest, str(response["ETag"])

    def _delete(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            self._s3.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


def _parts_of(manifest: dict[str, Any]) -> tuple[Part, ...]:
    return tuple(Part(str(k), int(n), int(s)) for k, n, s in manifest.get("parts", []))


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def duckdb_config(*, threads: int, memory_limit: str, temp_directory: str) -> dict[str, Any]:
    """DuckDB settings for a process that may not download anything (a Lambda, CI):
    the extensions it needs (json, parquet) are part of the Python package."""
    return {
        "threads": threads, "memory_limit": memory_limit, "temp_directory": temp_directory,
        "autoinstall_known_extensions": False, "home_directory": temp_directory,
    }


def read_records(data: bytes) -> list[dict[str, Any]]:
    """A raw object's records (for tests and tools)."""
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def now_utc() -> datetime:
    return utc(time.time())

