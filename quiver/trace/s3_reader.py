"""Events read straight from the events bucket: list the window's partitions, scan
the gzip'd JSON lines.

The key layout `events/event=<type>/date=YYYY-MM-DD/hour=HH/<batch>.jsonl.gz`
bounds the listing: one listing per event type and day, starting after the
window's first hour (`StartAfter`) and stopping past its last. Every object found
is read whole, so this suits the local stack and small deployments; past
`max_objects` the read stops with an error that points at Athena.
"""

from __future__ import annotations

import gzip
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from quiver.events import EVENT_TYPES
from quiver.export import PREFIX
from quiver.trace.reader import Progress, no_progress
from quiver.trace.target import Event, Target, TraceError, Window

# Reading more objects than this is Athena's work: each costs a GET and a gunzip here.
DEFAULT_MAX_OBJECTS = 20_000
# Objects fetched at once; S3 serves many GETs in parallel, the scan is cheap.
FETCHERS = 8


class S3EventReader:
    name = "s3"

    def __init__(self, s3: Any, *, bucket: str, max_objects: int = DEFAULT_MAX_OBJECTS,
                 event_types: tuple[str, ...] = EVENT_TYPES) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._max_objects = max_objects
        self._event_types = event_types
        self._listed = 0
        self._bytes = 0

    def describe(self) -> str:
        return (f"S3 listing of s3://{self._bucket}/{PREFIX}/: {self._listed} objects, "
                f"{self._bytes} bytes read")

    def keys(self, window: Window, *, types: tuple[str, ...] | None = None) -> list[str]:
        """The keys of every object in the window's hour partitions (of `types`, or of
        every event type this reader reads)."""
        keys: list[str] = []
        for event in types if types is not None else self._event_types:
            for date, first, last in window.days():
                prefix = f"{PREFIX}/event={event}/date={date}/"
                keys.extend(self._list(prefix, first=first, last=last))
                if len(keys) > self._max_objects:
                    raise TraceError(
                        f"more than {self._max_objects} event objects in the window: too "
                        "many to read one by one; use --athena (Athena over the Glue "
                        "table), a shorter --since, or a larger --max-objects")
        return keys

    def _list(self, prefix: str, *, first: str, last: str) -> list[str]:
        out: list[str] = []
        # Keys of hour HH sort after "hour=HH" and before "hour=HH+1": start there.
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix,
                                  "StartAfter": f"{prefix}hour={first}"}
        end = f"{prefix}hour={last}/\U0010ffff"
        while True:
            response = _call(self._s3.list_objects_v2, **kwargs)
            for item in response.get("Contents", []):
                key = item["Key"]
                if key > end:
                    return out
                out.append(key)
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return out
            kwargs = {"Bucket": self._bucket, "Prefix": prefix, "ContinuationToken": token}

    def read(self, target: Target, window: Window, *,
             progress: Progress = no_progress) -> list[Event]:
        # An actor's changes are control events: that partition only.
        keys = self.keys(window, types=("control",) if target.actor is not None else None)
        self._listed = len(keys)
        self._bytes = 0
        needle = target.needle()
        out: list[Event] = []
        with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="trace-s3") as pool:
            for done, (key, data) in enumerate(pool.map(self._get, keys), 1):
                self._bytes += len(data)
                out.extend(scan(data, target, needle=needle, key=key))
                progress(done, len(keys), "objects")
        # The window is whole hours of partitions; keep it to the instant asked for.
        return [r for r in out if window.start_at <= str(r.get("at", "")) <= window.end_at]

    def _get(self, key: str) -> tuple[str, bytes]:
        body: bytes = _call(self._s3.get_object, Bucket=self._bucket, Key=key)["Body"].read()
        return key, body


def scan(data: bytes, target: Target, *, needle: str, key: str = "") -> list[Event]:
    """The records of one exported object that `target` matches."""
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise TraceError(f"{key}: not a gzip'd UTF-8 events object: {exc}") from None
    out: list[Event] = []
    # "\n" only: JSON written with ensure_ascii=False may hold U+2028 inside a record.
    for line in text.split("\n"):
        if not line or needle not in line.lower():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{key}: a line is not JSON: {exc}") from None
        if isinstance(record, dict) and target.matches(record):
            out.append(record)
    return out


def _call(fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise TraceError(f"S3 {getattr(fn, '__name__', 'call')}: {exc}") from exc
