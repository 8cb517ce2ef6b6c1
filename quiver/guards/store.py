"""The guards' counters and crossing state, in the controls table (cdk/tables.py).

Items (partition key `pk`, sort key `sk`, TTL on `expires_at`):
- `guard|<scope>|<name>` / `b|<bucket start, 12 digits>`: attempts, hard, complaints
  of one 10-minute bucket of a tenant's or campaign's events; TTL past the longest
  window, so the table holds only what a window can still read;
- `guard|<scope>|<name>` / `state`: `tripped` (a pause was put in force and the rate
  has not fallen back below its threshold since) and the pause's control id;
- `guard-batch|<batch id>` / `<chunk>`: the claim of an export batch's counts. It is
  written in the same transaction as the counters it adds to, on condition that it
  does not exist: a re-delivered batch (or the export run again on it) adds nothing.

A pause is written in one transaction with the state item's change to tripped, on
condition that it was not tripped: two exports judging the same crossing at once put
one pause in force, and a pause an operator lifts is not put back while the rate it
was for still stands (the crossing is over only once the rate falls below).

Sorted digits make a window one Query: `sk >= b|<first bucket>` reads the window's
buckets and, after them ("b|" < "state"), the state item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from botocore.exceptions import ClientError

from quiver.controls.model import Control
from quiver.guards.counts import CountKey, Counts, Scope
from quiver.storage.base import StorageError
from quiver.storage.boto_calls import call_sync, query_all_sync
from quiver.storage.dynamo import control_item

# DynamoDB allows 100 items a transaction; moto's server and older regions 25. One
# of them is the batch claim.
TRANSACTION_ITEMS: Final = 25
# An export batch is re-delivered within the events queue's retention (14 days).
CLAIM_TTL: Final = 15 * 86400
# A tripped state with no traffic after it lapses after this; the next crossing then
# pauses again.
STATE_TTL: Final = 35 * 86400
STATE_SK: Final = "state"
_BUCKET_PREFIX: Final = "b|"


@dataclass
class Standing:
    """What the store holds for one tenant or campaign: its buckets from the window's
    start, and whether a crossing of it is under way."""

    buckets: dict[int, Counts] = field(default_factory=dict)
    tripped: bool = False


class GuardStore(Protocol):
    def add(self, batch_id: str, counts: Mapping[CountKey, Counts], *, now: float,
            keep_for: float) -> bool:
        """Add a batch's counts (kept `keep_for` seconds past their bucket); False,
        adding nothing, if this batch's counts were added before."""
        ...

    def standing(self, scope: Scope, name: str, *, since: int) -> Standing: ...

    def trip(self, scope: Scope, name: str, control: Control) -> bool:
        """Put `control` in force and mark the crossing; False, writing nothing, if a
        crossing is already under way."""
        ...

    def rearm(self, scope: Scope, name: str) -> None:
        """The rate is back below: end the crossing, so the next one pauses again."""
        ...


def partition(scope: Scope, name: str) -> str:
    return f"guard|{scope}|{name}"


def bucket_sk(bucket: int) -> str:
    return f"{_BUCKET_PREFIX}{bucket:012d}"


class DynamoGuardStore:
    """`GuardStore` on the controls table; synchronous calls (the export has no loop)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def add(self, batch_id: str, counts: Mapping[CountKey, Counts], *, now: float,
            keep_for: float) -> bool:
        keys = sorted(counts)  # the same chunks on every run of one batch
        step = TRANSACTION_ITEMS - 1
        added = False
        for chunk, start in enumerate(range(0, len(keys), step)):
            items: list[dict[str, Any]] = [{"Put": {
                "TableName": self.table,
                "Item": {"pk": {"S": f"guard-batch|{batch_id}"}, "sk": {"S": str(chunk)},
                         "expires_at": {"N": str(int(now) + CLAIM_TTL)}},
                "ConditionExpression": "attribute_not_exists(pk)",
            }}]
            for key in keys[start:start + step]:
                scope, name, bucket = key
                c = counts[key]
                items.append({"Update": {
                    "TableName": self.table,
                    "Key": {"pk": {"S": partition(scope, name)}, "sk": {"S": bucket_sk(bucket)}},
                    "UpdateExpression": "ADD attempts :a, hard :h, complaints :c "
                                        "SET expires_at = :e",
                    "ExpressionAttributeValues": {
                        ":a": {"N": str(c.attempts)}, ":h": {"N": str(c.hard_bounces)},
                        ":c": {"N": str(c.complaints)},
                        ":e": {"N": str(bucket + int(keep_for))},
                    },
                }})
            # A chunk claimed before (an earlier run got this far) is skipped alone.
            added = self._transact(items) or added
        return added

    def standing(self, scope: Scope, name: str, *, since: int) -> Standing:
        out = Standing()
        for item in query_all_sync(
                self._client, TableName=self.table, ConsistentRead=True,
                KeyConditionExpression="pk = :pk AND sk >= :since",
                ExpressionAttributeValues={":pk": {"S": partition(scope, name)},
                                           ":since": {"S": bucket_sk(since)}}):
            sk = item["sk"]["S"]
            if sk == STATE_SK:
                out.tripped = item.get("tripped", {}).get("BOOL", False)
            elif sk.startswith(_BUCKET_PREFIX):
                out.buckets[int(sk[len(_BUCKET_PREFIX):])] = Counts(
                    attempts=_int(item, "attempts"), hard_bounces=_int(item, "hard"),
                    complaints=_int(item, "complaints"))
        return out

    def trip(self, scope: Scope, name: str, control: Control) -> bool:
        return self._transact([
            {"Update": {
                "TableName": self.table,
                "Key": {"pk": {"S": partition(scope, name)}, "sk": {"S": STATE_SK}},
                "UpdateExpression": "SET tripped = :t, control = :id, tripped_at = :at, "
                                    "expires_at = :e",
                "ConditionExpression": "attribute_not_exists(tripped) OR tripped = :f",
                "ExpressionAttributeValues": {
                    ":t": {"BOOL": True}, ":f": {"BOOL": False}, ":id": {"S": control.id},
                    ":at": {"N": repr(float(control.created_at))},
                    ":e": {"N": str(int(control.created_at) + STATE_TTL)},
                },
            }},
            {"Put": {"TableName": self.table, "Item": control_item(control)}},
        ])

    def rearm(self, scope: Scope, name: str) -> None:
        try:
            call_sync(self._client.update_item, TableName=self.table,
                      Key={"pk": {"S": partition(scope, name)}, "sk": {"S": STATE_SK}},
                      UpdateExpression="SET tripped = :f",
                      ConditionExpression="tripped = :t",
                      ExpressionAttributeValues={":t": {"BOOL": True}, ":f": {"BOOL": False}})
        except StorageError as exc:
            if not _conditional(exc):
                raise

    def _transact(self, items: Sequence[dict[str, Any]]) -> bool:
        """True if the transaction was written; False if a condition failed."""
        try:
            call_sync(self._client.transact_write_items, TransactItems=list(items))
        except StorageError as exc:
            if _conditional(exc):
                return False
            raise
        return True


def _conditional(exc: StorageError) -> bool:
    """A failed condition (a plain one, or one that cancelled a transaction), as
    opposed to a throttle or an outage, which the caller must see."""
    cause = exc.__cause__
    if not isinstance(cause, ClientError):
        return False
    error = cause.response.get("Error", {})
    code = error.get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    if code != "TransactionCanceledException":
        return False
    reasons = cause.response.get("CancellationReasons")
    if reasons is None:  # some endpoints give the reasons only in the message
        return "ConditionalCheckFailed" in str(error.get("Message", ""))
    codes = {r.get("Code") for r in reasons}
    return "ConditionalCheckFailed" in codes and codes <= {"ConditionalCheckFailed", "None"}


def _int(item: Mapping[str, Any], name: str) -> int:
    value = item.get(name)
    return int(value["N"]) if value is not None else 0


class MemoryGuardStore:
    """`GuardStore` in memory (unit tests, tools): the same rules as the table's."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[Scope, str], dict[int, Counts]] = {}
        self.tripped: dict[tuple[Scope, str], bool] = {}
        self.claims: set[tuple[str, int]] = set()
        self.controls: dict[str, Control] = {}

    def add(self, batch_id: str, counts: Mapping[CountKey, Counts], *, now: float,
            keep_for: float) -> bool:
        keys = sorted(counts)
        step = TRANSACTION_ITEMS - 1
        added = False
        for chunk, start in enumerate(range(0, len(keys), step)):
            if (batch_id, chunk) in self.claims:
                continue
            self.claims.add((batch_id, chunk))
            for scope, name, bucket in keys[start:start + step]:
                held = self.buckets.setdefault((scope, name), {})
                held[bucket] = held.get(bucket, Counts()) + counts[(scope, name, bucket)]
            added = True
        return added

    def standing(self, scope: Scope, name: str, *, since: int) -> Standing:
        held = self.buckets.get((scope, name), {})
        return Standing(buckets={b: c for b, c in held.items() if b >= since},
                        tripped=self.tripped.get((scope, name), False))

    def trip(self, scope: Scope, name: str, control: Control) -> bool:
        if self.tripped.get((scope, name)):
            return False
        self.tripped[(scope, name)] = True
        self.controls[control.id] = control
        return True

    def rearm(self, scope: Scope, name: str) -> None:
        self.tripped[(scope, name)] = False
