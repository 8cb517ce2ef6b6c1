"""The adaptive rates' store on the controls table (quiver.adaptive.state)."""

from __future__ import annotations

import logging
import math
from typing import Any

from quiver.adaptive.state import RateState
from quiver.storage.base import StorageError
from quiver.storage.boto_calls import call, error_code, query_all

_log = logging.getLogger("quiver.storage")

# The partition of the rate records (the sender role may write it: cdk/sender_service.py).
PK = "adaptive-rate"


class DynamoRates:
    """`RateStore` on the controls table: pk "adaptive-rate", sk "<source>|<provider>",
    with the record's fields and a `version` every write is conditioned on. One item
    per (source, provider) that was ever adapted: the partition stays small."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    async def rates(self) -> list[RateState]:
        items = await query_all(
            self._client, TableName=self.table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": PK}}, ConsistentRead=True)
        return [s for s in map(_rate_state, items) if s is not None]

    async def rate(self, source: str, provider: str) -> RateState | None:
        response = await call(self._client.get_item, TableName=self.table, ConsistentRead=True,
                              Key={"pk": {"S": PK}, "sk": {"S": f"{source}|{provider}"}})
        item = response.get("Item")
        return _rate_state(item) if item else None

    async def put_rate(self, state: RateState, *, expected: int | None) -> bool:
        if expected is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {"ConditionExpression": "version = :v",
                         "ExpressionAttributeValues": {":v": {"N": str(expected)}}}
        try:
            await call(self._client.put_item, TableName=self.table, Item=_rate_item(state),
                       **condition)
        except StorageError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True


def _rate_item(state: RateState) -> dict[str, Any]:
    def n(value: float) -> dict[str, str]:
        return {"N": repr(float(value))}

    return {
        "pk": {"S": PK}, "sk": {"S": state.key}, "source": {"S": state.source},
        "provider": {"S": state.provider}, "rate": n(state.rate),
        "static_max": n(state.static_max), "action": {"S": state.action},
        "rule": {"S": state.rule}, "reason": {"S": state.reason or "-"},
        "since": n(state.since), "reduced_at": n(state.reduced_at),
        "version": {"N": str(state.version)},
    }


def _rate_state(item: dict[str, Any]) -> RateState | None:
    """The record an item holds; None (logged) for one no sender can use."""
    try:
        action = item["action"]["S"]
        if action not in ("reduce", "raise", "floor"):
            raise ValueError(f"action {action!r}")
        state = RateState(
            source=item["source"]["S"], provider=item["provider"]["S"],
            rate=float(item["rate"]["N"]), static_max=float(item["static_max"]["N"]),
            action=action, rule=item["rule"]["S"], reason=item["reason"]["S"],
            since=float(item["since"]["N"]), reduced_at=float(item["reduced_at"]["N"]),
            version=int(item["version"]["N"]))
        if not (math.isfinite(state.rate) and state.rate > 0):
            raise ValueError(f"rate {state.rate!r}")
        return state
    except (KeyError, ValueError, TypeError) as exc:
        _log.warning("controls table: rate item %r skipped: %s", item.get("sk"), exc)
        return None
