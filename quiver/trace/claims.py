"""What the finals table says: the final event the export claimed per recipient of a
message (quiver.storage.finals; pk "final#<id>", sk the recipient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from quiver.trace.target import TraceError

# Messages whose claims one trace reads: an address's trace may span many messages,
# and each is one Query.
MAX_MESSAGES = 100


@dataclass(frozen=True, slots=True)
class Claim:
    id: str
    rcpt: str
    event: str
    at: str
    batch: str


def read_claims(dynamodb: Any, *, table: str, message_ids: list[str]) -> list[Claim]:
    """The claims of up to MAX_MESSAGES messages (the first ones given)."""
    out: list[Claim] = []
    for message_id in message_ids[:MAX_MESSAGES]:
        kwargs: dict[str, Any] = {
            "TableName": table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"final#{message_id}"}},
            # Reserved words in DynamoDB expressions, hence the placeholders.
            "ProjectionExpression": "sk, #e, #a, #b",
            "ExpressionAttributeNames": {"#e": "event", "#a": "at", "#b": "batch"},
        }
        while True:
            try:
                response = dynamodb.query(**kwargs)
            except (BotoCoreError, ClientError) as exc:
                raise TraceError(f"finals table {table}: {exc}") from exc
            for item in response.get("Items", []):
                out.append(Claim(
                    id=message_id, rcpt=item["sk"]["S"],
                    event=item.get("event", {}).get("S", ""),
                    at=item.get("at", {}).get("S", ""),
                    batch=item.get("batch", {}).get("S", ""),
                ))
            if "LastEvaluatedKey" not in response:
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    return out
