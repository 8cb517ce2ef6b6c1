"""`TenantKeyStore` on the tenant keys table (cdk/tables.py): pk "key#<key id>", sk
"key", `tenant`, `digest`, `created_at`, `who`, and `revoked_at` once revoked.

Its own table rather than a partition of the controls table: every sender reads the
controls table, and no sender needs to see a key's digest. The ingresses get
GetItem on this table only; `quiver keys` (an operator's credentials) writes it.
Operators keep hundreds of keys at most, so listing is a Scan.
"""

from __future__ import annotations

import logging
from typing import Any

from quiver.storage.base import StorageError
from quiver.storage.boto_calls import call, error_code
from quiver.tenants.keys import KeyRecord

_log = logging.getLogger(__name__)
_SK = "key"


def _pk(key_id: str) -> str:
    return f"key#{key_id}"


class DynamoTenantKeys:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    async def put_new(self, record: KeyRecord) -> bool:
        item: dict[str, Any] = {
            "pk": {"S": _pk(record.key_id)}, "sk": {"S": _SK},
            "tenant": {"S": record.tenant}, "digest": {"S": record.digest},
            "created_at": {"N": repr(float(record.created_at))}, "who": {"S": record.who},
        }
        try:
            await call(self._client.put_item, TableName=self.table, Item=item,
                       ConditionExpression="attribute_not_exists(pk)")
        except StorageError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    async def get(self, key_id: str) -> KeyRecord | None:
        response = await call(self._client.get_item, TableName=self.table,
                              Key={"pk": {"S": _pk(key_id)}, "sk": {"S": _SK}},
                              ConsistentRead=True)
        item = response.get("Item")
        return _record(item) if item else None

    async def revoke(self, key_id: str, *, now: float) -> KeyRecord | None:
        try:
            response = await call(
                self._client.update_item, TableName=self.table,
                Key={"pk": {"S": _pk(key_id)}, "sk": {"S": _SK}},
                UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :now)",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":now": {"N": repr(float(now))}},
                ReturnValues="ALL_NEW")
        except StorageError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _record(response["Attributes"])

    async def all(self) -> list[KeyRecord]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            response = await call(self._client.scan, **kwargs)
            items.extend(response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return [r for r in map(_record, items) if r is not None]


def _record(item: dict[str, Any]) -> KeyRecord | None:
    """The record an item holds; None (logged) for an item that is not one, so a bad
    item written by hand refuses its own key and hides no other."""
    try:
        revoked = item.get("revoked_at")
        return KeyRecord(
            key_id=item["pk"]["S"].removeprefix("key#"), tenant=item["tenant"]["S"],
            digest=item["digest"]["S"], created_at=float(item["created_at"]["N"]),
            who=item.get("who", {}).get("S", ""),
            revoked_at=float(revoked["N"]) if revoked is not None else None)
    except (KeyError, ValueError, TypeError) as exc:
        _log.warning("tenant keys table: item %r skipped: %s", item.get("pk"), exc)
        return None
