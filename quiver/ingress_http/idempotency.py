"""Replay records: the same (tenant, id) sent again returns the first result and
enqueues nothing.

One item per caller message, in three steps around the enqueue:

1. claim: a conditional put of a `pending` record (a random token, a lease, the
   message's fingerprint). It succeeds only if there is no record, or a pending one
   of the same message whose lease has run out. A request that finds a live
   pending record answers "in progress, retry"; one that finds a `done` record
   answers its result; one that finds a record of another message under the same
   id is refused (an id names one message).
2. enqueue (SendMessage, after any spill).
3. complete: the record becomes `done` with the result (the queue id), if the token
   is still ours. A refusal or a failed send instead releases the claim (a delete
   if the token is ours), so a retry is free to enqueue.

A crash between 2 and 3 leaves a pending record whose message is in the queue. When
its lease runs out a replay takes it over and enqueues again: the one duplicate the
contract allows ("a crash means a possible duplicate delivery, never a lost
message"). Both copies carry the same envelope id, so the sender's final-event
claims (quiver/storage/finals.py) skip the recipients the first copy already
finished. The lease outlasts any invocation (the function's timeout is 29 s), so a
live request is never taken over. Records expire a day after their claim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from quiver.storage.base import StorageError
from quiver.storage.boto_calls import call, error_code

LEASE_SECONDS = 120.0
TTL_SECONDS = 86400
State = Literal["pending", "done"]


@dataclass(frozen=True, slots=True)
class Replay:
    """An existing record that stopped a claim."""
    state: State
    fingerprint: str
    result: dict[str, Any] | None
    lease_until: float


class ReplayStore(Protocol):
    async def claim(self, tenant: str, message_id: str, *, fingerprint: str, token: str,
                    now: float) -> Replay | None:
        """None: the claim is ours; else the record that stopped it."""
        ...

    async def complete(self, tenant: str, message_id: str, *, token: str,
                       result: dict[str, Any]) -> None: ...

    async def release(self, tenant: str, message_id: str, *, token: str) -> None: ...


def _key(tenant: str, message_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"{tenant}#{message_id}"}, "sk": {"S": "msg"}}


class DynamoReplays:
    """`ReplayStore` on the idempotency table (cdk/tables.py)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    async def claim(self, tenant: str, message_id: str, *, fingerprint: str, token: str,
                    now: float) -> Replay | None:
        item = {**_key(tenant, message_id), "state": {"S": "pending"},
                "token": {"S": token}, "fp": {"S": fingerprint},
                "lease_until": {"N": repr(now + LEASE_SECONDS)},
                "expires_at": {"N": str(math.ceil(now + TTL_SECONDS))}}
        try:
            await call(self._client.put_item, TableName=self.table, Item=item,
                       ConditionExpression="attribute_not_exists(pk) OR (#s = :pending "
                                           "AND lease_until < :now AND fp = :fp)",
                       ExpressionAttributeNames={"#s": "state"},
                       ExpressionAttributeValues={":pending": {"S": "pending"},
                                                  ":now": {"N": repr(now)},
                                                  ":fp": {"S": fingerprint}})
            return None
        except StorageError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
        response = await call(self._client.get_item, TableName=self.table,
                              Key=_key(tenant, message_id), ConsistentRead=True)
        found = response.get("Item")
        if found is None:
            # Expired and removed between the put and the read: a claim later succeeds.
            return Replay(state="pending", fingerprint=fingerprint, result=None,
                          lease_until=now)
        result = found.get("result", {}).get("S")
        return Replay(state="done" if found["state"]["S"] == "done" else "pending",
                      fingerprint=found["fp"]["S"],
                      result=json.loads(result) if result else None,
                      lease_until=float(found["lease_until"]["N"]))

    async def complete(self, tenant: str, message_id: str, *, token: str,
                       result: dict[str, Any]) -> None:
        try:
            await call(self._client.update_item, TableName=self.table,
                       Key=_key(tenant, message_id),
                       UpdateExpression="SET #s = :done, #r = :r",
                       ConditionExpression="#t = :token",
                       ExpressionAttributeNames={"#s": "state", "#r": "result", "#t": "token"},
                       ExpressionAttributeValues={":done": {"S": "done"},
                                                  ":r": {"S": json.dumps(result)},
                                                  ":token": {"S": token}})
        except StorageError as exc:
            # Taken over after our lease ran out: the taker's record stands.
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    async def release(self, tenant: str, message_id: str, *, token: str) -> None:
        try:
            await call(self._client.delete_item, TableName=self.table,
                       Key=_key(tenant, message_id), ConditionExpression="#t = :token",
                       ExpressionAttributeNames={"#t": "token"},
                       ExpressionAttributeValues={":token": {"S": token}})
        except StorageError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise


@dataclass
class _Record:
    state: State
    token: str
    fingerprint: str
    lease_until: float
    result: dict[str, Any] | None = None


class MemoryReplays:
    """`ReplayStore` in a dict, for unit tests."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], _Record] = {}

    async def claim(self, tenant: str, message_id: str, *, fingerprint: str, token: str,
                    now: float) -> Replay | None:
        found = self.records.get((tenant, message_id))
        if found is None or (found.state == "pending" and found.lease_until < now
                             and found.fingerprint == fingerprint):
            self.records[(tenant, message_id)] = _Record(
                state="pending", token=token, fingerprint=fingerprint,
                lease_until=now + LEASE_SECONDS)
            return None
        return Replay(state=found.state, fingerprint=found.fingerprint, result=found.result,
                      lease_until=found.lease_until)

    async def complete(self, tenant: str, message_id: str, *, token: str,
                       result: dict[str, Any]) -> None:
        found = self.records.get((tenant, message_id))
        if found is not None and found.token == token:
            found.state, found.result = "done", result

    async def release(self, tenant: str, message_id: str, *, token: str) -> None:
        found = self.records.get((tenant, message_id))
        if found is not None and found.token == token:
            del self.records[(tenant, message_id)]
