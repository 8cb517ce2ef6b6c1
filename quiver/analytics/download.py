"""Copy the events bucket's objects to a folder, keeping the key layout and every
byte: a raw object stays the gzip the export wrote (boto3 hands over the stored
bytes; nothing here decompresses), so DuckDB, Athena and gzip read the copy alike."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver.analytics.layout import COMPACTED_PREFIX, RAW_PREFIX

PREFIXES = (f"{RAW_PREFIX}/", f"{COMPACTED_PREFIX}/")


class UnsafeKey(ValueError):
    """A key that would land outside the target folder."""


@dataclass(frozen=True, slots=True)
class Downloaded:
    objects: int
    bytes: int
    skipped: int


def local_path(root: Path, key: str) -> Path:
    parts = key.split("/")
    if not key or any(p in ("", "..", ".") for p in parts):
        raise UnsafeKey(f"refusing object key {key!r}: it would land outside {root}")
    return root.joinpath(*parts)


def download(s3: Any, *, bucket: str, to: Path, prefixes: Sequence[str] = PREFIXES
             ) -> Downloaded:
    """Every object under `prefixes` of `bucket`, to `to`/<key>. A file already there
    with the object's size is kept (a re-run resumes); files appear whole (written
    beside, then renamed)."""
    objects = size = skipped = 0
    paginator = s3.get_paginator("list_objects_v2")
    for prefix in prefixes:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                target = local_path(to, item["Key"])
                if target.is_file() and target.stat().st_size == item["Size"]:
                    skipped += 1
                    continue
                data = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.partial")
                partial.write_bytes(data)
                os.replace(partial, target)
                objects += 1
                size += len(data)
    return Downloaded(objects=objects, bytes=size, skipped=skipped)
