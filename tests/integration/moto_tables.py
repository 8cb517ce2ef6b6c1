"""A fresh DynamoDB table on moto's server with cdk/tables.py's key schema (pk, sk),
for the stores that live in such a table (controls, warm-up, guards, the others)."""

from __future__ import annotations

import uuid
from typing import Any


def fresh_table(ddb: Any, prefix: str = "controls") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST")
    return name
