"""Exactly-once final events: claims per (message id, recipient) in DynamoDB.

A sender that crashes after its events were accepted but before it deleted the
message sees the message come back and produces a second final event for the
same recipients. The export Lambda claims every final event before writing it:
the first batch to claim (message id, recipient) keeps it, a later batch's
copy is dropped. Re-running the export on the same batch finds its own claims
and keeps them, so a retried batch still writes its objects.

The sender reads the claims for a redelivered message (receive count > 1) and
skips recipients that are already final, so the common crash case costs no
second delivery either (unless the export had not yet run; then the claim
still keeps the events exactly-once).

Cost: one read and one write per final event at export; one Query per
redelivered message at the sender. Item: pk "final#<id>", sk "<rcpt>",
batch, event, at, expires_at (TTL, 15 days: beyond SQS's 14-day retention).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from quiver.events import FINAL_EVENTS, Record

TTL_SECONDS = 15 * 86400
_GET_BATCH = 100  # BatchGetItem limit
_WRITE_BATCH = 25  # BatchWriteItem limit
_RETRIES = 5


def _key(message_id: str, rcpt: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"final#{message_id}"}, "sk": {"S": rcpt}}


def _final_key(record: Record) -> tuple[str, str] | None:
    if record.get("event") not in FINAL_EVENTS or not record.get("rcpt"):
        return None
    return str(record["id"]), str(record["rcpt"])


class FinalsTable:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def claim(self, batch_id: str, records: Sequence[Record]) -> list[Record]:
        """The records to export: all but final events already claimed by another batch."""
        wanted: dict[tuple[str, str], Record] = {}
        for record in records:
            key = _final_key(record)
            if key is not None:
                wanted.setdefault(key, record)
        claimed = self._claimed_by(list(wanted))
        dropped = {k for k, batch in claimed.items() if batch != batch_id}
        new = [k for k in wanted if k not in claimed]
        self._write(batch_id, [(k, wanted[k]) for k in new])
        seen: set[tuple[str, str]] = set()
        keep = []
        for record in records:
            key = _final_key(record)
            if key is not None:
                if key in dropped or key in seen:
                    continue  # another batch (or this one, earlier) has its final event
                seen.add(key)
            keep.append(record)
        return keep

    def _claimed_by(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for start in range(0, len(keys), _GET_BATCH):
            request = {self.table: {
                "Keys": [_key(m, r) for m, r in keys[start:start + _GET_BATCH]],
                "ConsistentRead": True,
                # "batch" is a DynamoDB reserved word: it needs a placeholder.
                "ProjectionExpression": "pk, sk, #b",
                "ExpressionAttributeNames": {"#b": "batch"},
            }}
            for attempt in range(_RETRIES):
                response = self._client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    message_id = item["pk"]["S"].removeprefix("final#")
                    out[(message_id, item["sk"]["S"])] = item["batch"]["S"]
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise RuntimeError(f"{self.table}: BatchGetItem left keys unprocessed")
        return out

    def _write(self, batch_id: str, items: list[tuple[tuple[str, str], Record]]) -> None:
        expires = str(int(time.time()) + TTL_SECONDS)
        for start in range(0, len(items), _WRITE_BATCH):
            requests = [{"PutRequest": {"Item": {
                **_key(m, r), "batch": {"S": batch_id}, "event": {"S": str(rec["event"])},
                "at": {"S": str(rec["at"])}, "expires_at": {"N": expires},
            }}} for (m, r), rec in items[start:start + _WRITE_BATCH]]
            pending: dict[str, Any] = {self.table: requests}
            for attempt in range(_RETRIES):
                response = self._client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(0.05 * 2**attempt)
            else:
                raise RuntimeError(f"{self.table}: BatchWriteItem left items unprocessed")

    def finalized(self, message_id: str) -> set[str]:
        """Recipients of `message_id` that already have a final event (synchronous)."""
        out: set[str] = set()
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"final#{message_id}"}},
            "ProjectionExpression": "sk",
            "ConsistentRead": True,
        }
        while True:
            response = self._client.query(**kwargs)
            out.update(item["sk"]["S"] for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return out
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
