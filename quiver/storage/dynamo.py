"""The DynamoDB stores: final-event claims, fleet membership, the suppression list,
return-path references, operator controls.

Every table has the key schema of cdk/tables.py (partition key `pk`, sort key
`sk`, TTL on `expires_at`), which documents each store's items. Calls go
through `boto_calls`, so a failure is a StorageError whatever the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from quiver.controls.model import Control, Selector
from quiver.events import Record
from quiver.storage.base import (
    ALL_TENANTS,
    RETURN_PATH_TTL,
    ReturnPathRecord,
    StorageError,
    Suppression,
)
from quiver.storage.boto_calls import call, call_sync, error_code, query_all, query_all_sync
from quiver.storage.dynamo_lean import LeanDynamoClient
from quiver.storage.finals import (
    CONFIRMATION_PREFIX,
    CONFIRMATION_SK,
    TTL_SECONDS,
    Claim,
    claim_batch,
    confirmation_item,
    final_key,
    must_claim,
    parse_confirmation,
)
from quiver.storage.membership import HeartbeatMembership

log = logging.getLogger("quiver.sender")


_log = logging.getLogger("quiver.storage")
_GET_BATCH = 100  # BatchGetItem limit
_WRITE_BATCH = 25  # BatchWriteItem limit
_RETRIES = 5
_BACKOFF = 0.05
# A heartbeat item outlives its task by this much; DynamoDB's TTL then removes it.
_HEARTBEAT_TTL = 3600


def _final_key(message_id: str, rcpt: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"final#{message_id}"}, "sk": {"S": rcpt}}


class DynamoFinals:
    """`FinalsStore` on the finals table: pk "final#<id>", sk "<rcpt>", batch, event,
    at, expires_at (TTL_SECONDS after the claim)."""

    def __init__(self, client: Any, table: str, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.table = table
        self._clock = clock

    def claim(self, batch_id: str, records: Sequence[Record], *,
              producer: str | None = None) -> list[Record]:
        confirmation = None
        if producer is not None and any(final_key(r) is not None for r in records):
            item = call_sync(self._client.get_item, TableName=self.table, ConsistentRead=True,
                             Key={"pk": {"S": CONFIRMATION_PREFIX + producer},
                                  "sk": {"S": CONFIRMATION_SK}}).get("Item")
            confirmation = parse_confirmation(item)
        return claim_batch(batch_id, records, claimed_by=self._claimed_by, write=self._write,
                           claims=must_claim(confirmation))

    async def confirm(self, producer: str, risky: Collection[str]) -> None:
        await call(self._client.put_item, TableName=self.table, Item=confirmation_item(
            producer, risky, expires=int(self._clock()) + TTL_SECONDS))

    def _claimed_by(self, keys: list[Claim]) -> dict[Claim, str]:
        out: dict[Claim, str] = {}
        for start in range(0, len(keys), _GET_BATCH):
            request: dict[str, Any] = {self.table: {
                "Keys": [_final_key(m, r) for m, r in keys[start:start + _GET_BATCH]],
                "ConsistentRead": True,
                # "batch" is a DynamoDB reserved word: it needs a placeholder.
                "ProjectionExpression": "pk, sk, #b",
                "ExpressionAttributeNames": {"#b": "batch"},
            }}
            for attempt in range(_RETRIES):
                response = call_sync(self._client.batch_get_item, RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    message_id = item["pk"]["S"].removeprefix("final#")
                    out[(message_id, item["sk"]["S"])] = item["batch"]["S"]
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(_BACKOFF * 2**attempt)
            else:
                raise StorageError(f"{self.table}: BatchGetItem left keys unprocessed")
        return out

    def _write(self, batch_id: str, items: list[tuple[Claim, Record]]) -> None:
        expires = str(int(self._clock()) + TTL_SECONDS)
        for start in range(0, len(items), _WRITE_BATCH):
            requests = [{"PutRequest": {"Item": {
                **_final_key(m, r), "batch": {"S": batch_id},
                "event": {"S": str(rec["event"])}, "at": {"S": str(rec["at"])},
                "expires_at": {"N": expires},
            }}} for (m, r), rec in items[start:start + _WRITE_BATCH]]
            pending: dict[str, Any] = {self.table: requests}
            for attempt in range(_RETRIES):
                response = call_sync(self._client.batch_write_item, RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(_BACKOFF * 2**attempt)
            else:
                raise StorageError(f"{self.table}: BatchWriteItem left items unprocessed")

    async def finalized(self, message_id: str) -> set[str]:
        items = await query_all(
            self._client, TableName=self.table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"final#{message_id}"}},
            ProjectionExpression="sk", ConsistentRead=True)
        return {item["sk"]["S"] for item in items}


PARTITION = "senders"


class DynamoMembership(HeartbeatMembership):
    """Heartbeats in the senders table: pk "senders", sk the task id, heartbeat,
    expires_at, stale (seconds after which readers count the task dead), and
    `status`, the task's status record (quiver.status.record), when given one."""

    def __init__(
        self, *, client: Any, table: str, task_id: str, interval: float = 10.0,
        stale: float = 30.0, clock: Callable[[], float] = time.time,
        status: Callable[[], bytes] | None = None,
    ) -> None:
        super().__init__(task_id=task_id, interval=interval, stale=stale)
        self._client = client
        self._table = table
        self._clock = clock
        self._status = status

    async def beat(self) -> list[str]:
        now = self._clock()
        item: dict[str, Any] = {
            "pk": {"S": PARTITION}, "sk": {"S": self.task_id},
            "heartbeat": {"N": f"{now:.3f}"},
            "stale": {"N": f"{self.stale:g}"},
            # DynamoDB TTL removes items of tasks that died long ago.
            "expires_at": {"N": str(int(now + _HEARTBEAT_TTL))},
        }
        if self._status is not None:
            try:
                item["status"] = {"B": self._status()}
            except Exception:
                # The status is for people; the heartbeat keeps the fleet's shares.
                log.exception("status record not written with the heartbeat")
        await call(self._client.put_item, TableName=self._table, Item=item)
        # The ids, not a count: a task's rank among them places its connection slots.
        # The read costs the same (a query is billed for the items it reads either way).
        items = await query_all(
            self._client, TableName=self._table, KeyConditionExpression="pk = :p",
            FilterExpression="heartbeat > :h",
            ExpressionAttributeValues={":p": {"S": PARTITION},
                                       ":h": {"N": f"{now - self.stale}"}},
            ProjectionExpression="sk")
        return [item["sk"]["S"] for item in items]

    async def leave(self) -> None:
        await call(self._client.delete_item, TableName=self._table, Key={
            "pk": {"S": PARTITION}, "sk": {"S": self.task_id}})


@dataclass(frozen=True, slots=True)
class SenderItem:
    """One task's item in the senders table, as `quiver status` reads it."""

    task_id: str
    heartbeat: float
    # Seconds after its heartbeat that the task counts as dead (0: not written).
    stale: float
    status: bytes | None


def read_senders(client: Any, table: str) -> list[SenderItem]:
    """Every item of the senders table's partition, live or not (a strongly
    consistent query: a heartbeat written just before is seen)."""
    out: list[SenderItem] = []
    for item in query_all_sync(client, TableName=table, KeyConditionExpression="pk = :p",
                               ExpressionAttributeValues={":p": {"S": PARTITION}},
                               ConsistentRead=True):
        status = item.get("status", {}).get("B")
        out.append(SenderItem(
            task_id=item["sk"]["S"], heartbeat=float(item["heartbeat"]["N"]),
            stale=float(item.get("stale", {}).get("N", "0")),
            status=bytes(status) if status is not None else None))
    return out


def _suppression_key(tenant: str, address: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"tenant:{tenant}"}, "sk": {"S": f"address:{address.lower()}"}}


class DynamoSuppression:
    """`SuppressionStore` on the suppression table: pk "tenant:<tenant>" ("tenant:*"
    for every tenant), sk "address:<lower-cased address>", reason, source (absent
    when empty), created_at, expires_at. Lookups are eventually consistent reads
    (half the cost): an entry written a moment ago may be missed once."""

    def __init__(self, client: Any, table: str, *, clock: Callable[[], float] = time.time,
                 lean: LeanDynamoClient | None = None) -> None:
        self._client = client
        self.table = table
        self._clock = clock
        # The sender's batch calls (lookups, hard-bounce writes) go through the lean
        # client when given: a quarter of boto3's CPU per call, no thread hop.
        self._lean = lean

    async def _batch(self, action: str, request: dict[str, Any]) -> dict[str, Any]:
        if self._lean is not None:
            return await self._lean.call(action, {"RequestItems": request})
        fn = self._client.batch_get_item if action == "BatchGetItem" else \
            self._client.batch_write_item
        response: dict[str, Any] = await call(fn, RequestItems=request)
        return response

    async def lookup(
        self, addresses: Sequence[str], *, tenant: str | None
    ) -> dict[str, Suppression]:
        tenants = [t for t in dict.fromkeys((tenant, ALL_TENANTS)) if t is not None]
        wanted = list(dict.fromkeys(a.lower() for a in addresses))
        keys = [_suppression_key(t, a) for a in wanted for t in tenants]
        found: dict[tuple[str, str], Suppression] = {}
        for start in range(0, len(keys), _GET_BATCH):
            for item in await self._get(keys[start:start + _GET_BATCH]):
                stored = _suppression(item)
                found[(stored.tenant, stored.address)] = stored
        now = self._clock()
        out: dict[str, Suppression] = {}
        for address in addresses:
            for t in tenants:
                entry = found.get((t, address.lower()))
                if entry is not None and entry.active(now):
                    out[address] = entry
                    break
        return out

    async def _get(self, keys: list[dict[str, dict[str, str]]]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {self.table: {"Keys": keys}}
        for attempt in range(_RETRIES):
            response = await self._batch("BatchGetItem", request)
            items.extend(response.get("Responses", {}).get(self.table, []))
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return items
            await asyncio.sleep(_BACKOFF * 2**attempt)
        raise StorageError(f"{self.table}: BatchGetItem left keys unprocessed")

    async def put(self, entry: Suppression) -> None:
        await call(self._client.put_item, TableName=self.table, Item=_suppression_item(entry))

    async def put_many(self, entries: Sequence[Suppression]) -> None:
        # BatchWriteItem refuses two requests for one key: the last entry wins.
        latest = {(e.tenant, e.address.lower()): e for e in entries}
        items = [{"PutRequest": {"Item": _suppression_item(e)}} for e in latest.values()]
        for start in range(0, len(items), _WRITE_BATCH):
            pending: dict[str, Any] = {self.table: items[start:start + _WRITE_BATCH]}
            for attempt in range(_RETRIES):
                response = await self._batch("BatchWriteItem", pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                await asyncio.sleep(_BACKOFF * 2**attempt)
            else:
                raise StorageError(f"{self.table}: BatchWriteItem left items unprocessed")

    async def add(self, entry: Suppression, *, rewrite_own: bool = False) -> bool:
        if rewrite_own and not entry.source:
            raise ValueError("rewrite_own needs the entry's source: it tells its own apart")
        condition = "attribute_not_exists(pk) OR #reason <> :reason"
        names, values = {"#reason": "reason"}, {":reason": {"S": entry.reason}}
        if rewrite_own:
            condition += " OR #source = :source"
            names["#source"] = "source"
            values[":source"] = {"S": entry.source}
        try:
            await call(self._client.put_item, TableName=self.table,
                       Item=_suppression_item(entry), ConditionExpression=condition,
                       ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except StorageError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def remove(self, address: str, *, tenant: str = ALL_TENANTS) -> None:
        await call(self._client.delete_item, TableName=self.table,
                   Key=_suppression_key(tenant, address))

    async def pages(self, *, tenant: str | None) -> AsyncIterator[list[Suppression]]:
        kwargs: dict[str, Any] = {"TableName": self.table}
        if tenant is not None:
            kwargs["KeyConditionExpression"] = "pk = :pk"
            kwargs["ExpressionAttributeValues"] = {":pk": {"S": f"tenant:{tenant}"}}
        operation = self._client.query if tenant is not None else self._client.scan
        while True:
            response = await call(operation, **kwargs)
            yield [_suppression(item) for item in response.get("Items", [])
                   if item["pk"]["S"].startswith("tenant:")]
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _suppression_item(entry: Suppression) -> dict[str, Any]:
    item: dict[str, Any] = {
        **_suppression_key(entry.tenant, entry.address),
        "reason": {"S": entry.reason},
        "created_at": {"N": repr(float(entry.created_at))},
    }
    if entry.source:
        item["source"] = {"S": entry.source}
    if entry.expires_at is not None:
        item["expires_at"] = {"N": str(int(entry.expires_at))}
    return item


def _suppression(item: dict[str, Any]) -> Suppression:
    expires = item.get("expires_at")
    return Suppression(
        address=item["sk"]["S"].removeprefix("address:"),
        reason=item["reason"]["S"],
        source=item.get("source", {}).get("S", ""),
        created_at=float(item["created_at"]["N"]),
        tenant=item["pk"]["S"].removeprefix("tenant:"),
        expires_at=int(expires["N"]) if expires is not None else None,
    )


def _return_path_key(reference: bytes) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"rp#{reference.hex()}"}, "sk": {"S": "rp"}}


class DynamoReturnPaths:
    """`ReturnPathStore` in the finals table (same lifetime class: lookup items under a
    TTL, nothing to restore): pk "rp#<reference hex>", sk "rp", id, rcpt, tenant,
    campaign (absent when None), expires_at RETURN_PATH_TTL after the last put.

    Puts from concurrent messages are gathered into one BatchWriteItem of up to 25
    items, waiting at most `linger` seconds for company: boto3 spends about as much
    CPU on a call with one item as the sender does on a whole message, and 25 items
    cost about twice one. Each item is one write unit (well under 1 KB), on every
    attempt (the put refreshes its TTL); a verification is one eventually consistent
    GetItem (half a read unit)."""

    def __init__(self, client: Any, table: str, *, clock: Callable[[], float] = time.time,
                 linger: float = 0.005) -> None:
        self._client = client
        self.table = table
        self._clock = clock
        self._linger = linger
        self._pending: list[tuple[ReturnPathRecord, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def put(self, records: Sequence[ReturnPathRecord]) -> None:
        if not records:
            return
        loop = asyncio.get_running_loop()
        waiting = []
        for record in records:
            future: asyncio.Future[None] = loop.create_future()
            self._pending.append((record, future))
            waiting.append(future)
        while len(self._pending) >= _WRITE_BATCH:
            self._launch(self._pending[:_WRITE_BATCH])
            del self._pending[:_WRITE_BATCH]
        if self._pending and self._timer is None:
            self._timer = loop.call_later(self._linger, self._flush)
        await asyncio.gather(*waiting)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            self._launch(self._pending)
            self._pending = []

    def _launch(self, batch: list[tuple[ReturnPathRecord, asyncio.Future[None]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, batch: list[tuple[ReturnPathRecord, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            await self._batch_write([record for record, _ in batch])
        except Exception as exc:  # each waiting put gets it; the task itself ends quietly
            error = exc
        for _, future in batch:
            if not future.done():  # its put may have been cancelled
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def _batch_write(self, records: list[ReturnPathRecord]) -> None:
        expires = str(int(self._clock()) + RETURN_PATH_TTL)
        # BatchWriteItem refuses two puts of one key in a request.
        unique = list({r.reference: r for r in records}.values())
        requests = []
        for record in unique:
            item: dict[str, Any] = {
                **_return_path_key(record.reference),
                "id": {"S": record.message_id}, "rcpt": {"S": record.recipient},
                "expires_at": {"N": expires},
            }
            if record.tenant is not None:
                item["tenant"] = {"S": record.tenant}
            if record.campaign is not None:
                item["campaign"] = {"S": record.campaign}
            requests.append({"PutRequest": {"Item": item}})
        pending: dict[str, Any] = {self.table: requests}
        for attempt in range(_RETRIES):
            response = await call(self._client.batch_write_item, RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            await asyncio.sleep(_BACKOFF * 2**attempt)
        raise StorageError(f"{self.table}: BatchWriteItem left return paths unprocessed")

    def get(self, reference: bytes) -> ReturnPathRecord | None:
        response = call_sync(self._client.get_item, TableName=self.table,
                             Key=_return_path_key(reference))
        item = response.get("Item")
        if item is None:
            return None
        # DynamoDB's TTL deletes lazily (within days): a lapsed item is not a record.
        if int(item["expires_at"]["N"]) <= self._clock():
            return None
        tenant, campaign = item.get("tenant"), item.get("campaign")
        return ReturnPathRecord(
            reference=reference, message_id=item["id"]["S"], recipient=item["rcpt"]["S"],
            tenant=tenant["S"] if tenant is not None else None,
            campaign=campaign["S"] if campaign is not None else None,
        )


# Every control is one item under this partition key: a sender's poll is one Query.
_CONTROL_PK = "control"


class DynamoControls:
    """`ControlStore` on the controls table: pk "control", sk "<control id>", kind,
    selector (a map of the fields it names), reason, who, created_at, expires_at (TTL;
    absent for a control without expiry). Operators keep tens of controls at most, so
    the one partition never grows past a page."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    async def all(self) -> list[Control]:
        items = await query_all(
            self._client, TableName=self.table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": _CONTROL_PK}}, ConsistentRead=True)
        return [c for c in map(_control, items) if c is not None]

    async def put(self, control: Control) -> None:
        await call(self._client.put_item, TableName=self.table, Item=control_item(control))

    async def remove(self, control_id: str) -> Control | None:
        response = await call(self._client.delete_item, TableName=self.table,
                              Key={"pk": {"S": _CONTROL_PK}, "sk": {"S": control_id}},
                              ReturnValues="ALL_OLD")
        item = response.get("Attributes")
        return _control(item) if item else None


def control_item(control: Control) -> dict[str, Any]:
    """The controls-table item of `control` (what `quiver ctl` writes and senders read)."""
    item: dict[str, Any] = {
        "pk": {"S": _CONTROL_PK}, "sk": {"S": control.id}, "kind": {"S": control.kind},
        "selector": {"M": {k: {"S": v} for k, v in control.selector.named().items()}},
        "reason": {"S": control.reason}, "who": {"S": control.who},
        "created_at": {"N": repr(float(control.created_at))},
    }
    if control.expires_at is not None:
        # Whole seconds, rounded up: DynamoDB's TTL reads a number of seconds, and a
        # control must not lapse before the time it was given.
        item["expires_at"] = {"N": str(math.ceil(control.expires_at))}
    return item


def _control(item: dict[str, Any]) -> Control | None:
    """The control an item holds; None (logged) for an item no sender can apply, so
    one bad item written by hand does not hide the others."""
    try:
        expires = item.get("expires_at")
        named = item.get("selector", {}).get("M", {})
        selector = Selector.of({k: v["S"] for k, v in named.items()})
        return Control(
            id=item["sk"]["S"], kind=item["kind"]["S"], selector=selector,
            reason=item.get("reason", {}).get("S", ""), who=item["who"]["S"],
            created_at=float(item["created_at"]["N"]),
            expires_at=float(expires["N"]) if expires is not None else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        _log.warning("controls table: item %r skipped: %s", item.get("sk"), exc)
        return None
