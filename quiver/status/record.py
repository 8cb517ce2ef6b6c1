"""The status record: a snapshot as each sender writes it with its heartbeat, so
that `quiver status` and `quiver top` work from anywhere the senders table can
be read, without reaching the tasks.

Bounded: at most MAX_QUEUES ready queues (the deepest) and MAX_ERRORS last errors
(the newest), with how many were left out, then zlib-compressed. A task with
thousands of destinations must still fit a DynamoDB item (400 KB), and every
heartbeat pays write units per KB: compressed, a full record is a few KB, not
tens. If it is still over MAX_RECORD_BYTES the lists are halved until it fits.
Reading is bounded too: a record that inflates past MAX_JSON_BYTES is refused.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

VERSION = 1
# A ready queue's states, most held back first (snapshot.py says when each holds).
STATES = ("paused", "backing off", "throttled", "sending", "idle")
MAX_QUEUES = 200
MAX_ERRORS = 200
MAX_RECORD_BYTES = 64 * 1024
MAX_JSON_BYTES = 8 * 1024 * 1024


class RecordError(ValueError):
    """A stored status record that cannot be read."""


def capped(snapshot: dict[str, Any], *, queues: int = MAX_QUEUES,
           errors: int = MAX_ERRORS) -> dict[str, Any]:
    """`snapshot` with at most `queues` queues (deepest first, as the snapshot sorts
    them) and `errors` last errors, counting what was left out."""
    all_queues = snapshot["queues"]
    all_errors = snapshot["last_errors"]
    return {
        **snapshot,
        "queues": all_queues[:queues],
        "queues_omitted": snapshot.get("queues_omitted", 0) + max(0, len(all_queues) - queues),
        "last_errors": all_errors[:errors],
        "last_errors_omitted": (snapshot.get("last_errors_omitted", 0)
                                + max(0, len(all_errors) - errors)),
    }


def encode(snapshot: dict[str, Any], *, limit: int = MAX_RECORD_BYTES,
           queues: int = MAX_QUEUES, errors: int = MAX_ERRORS) -> bytes:
    """The record to store for `snapshot`: compressed JSON of at most `limit` bytes."""
    while True:
        text = json.dumps(capped(snapshot, queues=queues, errors=errors),
                          separators=(",", ":"), ensure_ascii=False)
        data = zlib.compress(text.encode("utf-8"), 6)
        if len(data) <= limit or (queues == 0 and errors == 0):
            return data
        queues, errors = queues // 2, errors // 2


def decode(data: bytes) -> dict[str, Any]:
    """A stored record's snapshot; RecordError if it is not one."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_JSON_BYTES)
    except zlib.error as exc:
        raise RecordError(f"not a compressed status record: {exc}") from exc
    if inflater.unconsumed_tail:
        raise RecordError(f"status record inflates past {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"status record is not JSON: {exc}") from exc
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise RecordError("status record is not a version 1 snapshot")
    return value
