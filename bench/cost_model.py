"""What AWS bills for a call: SQS 64 KB chunks, DynamoDB request units, S3 request
classes, and the price table (bench/prices_us_east_1.toml) that turns them into USD.

Pure functions over what a request carried, so bench/cost.py's moto-side logger
(lean_moto.log_requests) and the unit tests use the same arithmetic.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRICES = Path(__file__).with_name("prices_us_east_1.toml")


class PriceError(ValueError):
    """The price table is missing, unreadable or lacks a price."""


@dataclass(frozen=True, slots=True)
class Prices:
    recorded: str
    sqs_request: float  # USD per request (one billed 64 KB chunk)
    sqs_chunk: int
    ddb_write_unit: float
    ddb_read_unit: float
    write_unit_bytes: int
    read_unit_bytes: int
    s3_put: float
    s3_get: float
    lambda_request: float
    lambda_gb_s: dict[str, float]  # by architecture
    fargate_vcpu_s: dict[str, float]
    fargate_gb_s: dict[str, float]
    hours_per_month: float
    ec2_hour: dict[str, float]
    ipv4_hour: float
    endpoint_az_hour: float


def load_prices(path: Path = PRICES) -> Prices:
    """The price table at `path`; PriceError naming the file and the key at fault."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceError(f"{path}: cannot read the price table: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PriceError(f"{path}: not valid TOML: {exc}") from None

    def num(section: str, key: str) -> float:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PriceError(f"{path}: [{section}] {key} must be a number ≥ 0, "
                             f"not {value!r}")
        return float(value)

    def table(section: str, key: str) -> dict[str, float]:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if not isinstance(value, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()):
            raise PriceError(f"{path}: [{section}] {key} must be a table of numbers")
        return {str(k): float(v) for k, v in value.items()}

    recorded = data.get("recorded")
    if not isinstance(recorded, str) or not recorded:
        raise PriceError(f"{path}: `recorded` (the date the prices were read) is missing")
    hour = 3600.0
    return Prices(
        recorded=recorded,
        sqs_request=num("sqs", "usd_per_million_requests") / 1e6,
        sqs_chunk=int(num("sqs", "billing_chunk_bytes")) or 65536,
        ddb_write_unit=num("dynamodb", "usd_per_million_write_units") / 1e6,
        ddb_read_unit=num("dynamodb", "usd_per_million_read_units") / 1e6,
        write_unit_bytes=int(num("dynamodb", "write_unit_bytes")) or 1024,
        read_unit_bytes=int(num("dynamodb", "read_unit_bytes")) or 4096,
        s3_put=num("s3", "usd_per_thousand_put") / 1e3,
        s3_get=num("s3", "usd_per_thousand_get") / 1e3,
        lambda_request=num("lambda", "usd_per_million_requests") / 1e6,
        lambda_gb_s={a: num("lambda", f"usd_per_gb_second_{a}") for a in ("arm64", "x86_64")},
        fargate_vcpu_s={a: num("fargate", f"usd_per_vcpu_hour_{a}") / hour
                        for a in ("arm64", "x86_64")},
        fargate_gb_s={a: num("fargate", f"usd_per_gb_hour_{a}") / hour
                      for a in ("arm64", "x86_64")},
        hours_per_month=num("fixed", "hours_per_month"),
        ec2_hour=table("fixed", "ec2_usd_per_hour"),
        ipv4_hour=num("fixed", "public_ipv4_usd_per_hour"),
        endpoint_az_hour=num("fixed", "interface_endpoint_usd_per_az_hour"),
    )


# -- SQS ---------------------------------------------------------------------

SQS_PAYLOAD_ACTIONS = {"SendMessage", "SendMessageBatch", "ReceiveMessage"}


def sqs_billed_requests(payload_bytes: int, *, chunk: int = 65536) -> int:
    """Requests billed for one call: one per started `chunk` of its payload, at least one."""
    return max(1, math.ceil(payload_bytes / chunk))


# -- DynamoDB ----------------------------------------------------------------


def attribute_size(value: Any) -> int:
    """Bytes DynamoDB counts for one attribute value in its JSON wire form."""
    if not isinstance(value, dict) or len(value) != 1:
        return 0
    kind, v = next(iter(value.items()))
    if kind == "S":
        return len(str(v).encode())
    if kind == "N":
        digits = len(str(v).lstrip("-").replace(".", "").lstrip("0")) or 1
        return 1 + math.ceil(digits / 2)
    if kind == "B":
        return math.ceil(len(str(v)) * 3 / 4)  # base64 on the wire
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(attribute_size({kind[0]: x}) for x in v)
    if kind == "L":
        return 3 + sum(1 + attribute_size(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_size(x) for k, x in v.items())
    return 0


def item_size(item: dict[str, Any]) -> int:
    """An item's size: names and values of its attributes."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def write_units(size: int, *, unit: int = 1024) -> int:
    """Write request units for one item write: per started 1 KB, at least one."""
    return max(1, math.ceil(size / unit))


def read_units(size: int, *, consistent: bool, unit: int = 4096) -> float:
    """Read request units for reading `size` bytes (one item, or a Query's items
    together): per started 4 KB, at least one; half when eventually consistent."""
    units = max(1, math.ceil(size / unit))
    return float(units) if consistent else units / 2


def dynamodb_units(op: str, request: dict[str, Any], response: dict[str, Any]
                   ) -> tuple[float, float]:
    """(write units, read units) one DynamoDB call consumed, from its request and answer.
    A conditional write that fails still consumes its write units; a read of an item
    that is not there consumes the minimum."""
    wru = rru = 0.0
    if op in ("PutItem", "UpdateItem", "DeleteItem"):
        wru = write_units(item_size(request.get("Item") or request.get("Key") or {}))
    elif op == "BatchWriteItem":
        items = [w for writes in request.get("RequestItems", {}).values() for w in writes]
        unprocessed = sum(len(w) for w in response.get("UnprocessedItems", {}).values())
        done = items[: max(0, len(items) - unprocessed)]
        wru = sum(write_units(item_size((w.get("PutRequest") or w.get("DeleteRequest") or {})
                                        .get("Item") or {})) for w in done)
    elif op == "TransactWriteItems":
        for w in request.get("TransactItems", []):
            body = next(iter(w.values()), {})
            wru += 2 * write_units(item_size(body.get("Item") or body.get("Key") or {}))
    elif op == "GetItem":
        rru = read_units(item_size(response.get("Item") or {}),
                         consistent=bool(request.get("ConsistentRead")))
    elif op == "BatchGetItem":
        for table, spec in request.get("RequestItems", {}).items():
            found = response.get("Responses", {}).get(table, [])
            consistent = bool(spec.get("ConsistentRead"))
            sizes = [item_size(i) for i in found]
            missing = max(0, len(spec.get("Keys", [])) - len(found)
                          - len(response.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])))
            rru += sum(read_units(s, consistent=consistent) for s in sizes)
            rru += missing * read_units(0, consistent=consistent)
    elif op in ("Query", "Scan"):
        size = sum(item_size(i) for i in response.get("Items", []))
        rru = read_units(size, consistent=bool(request.get("ConsistentRead")))
    return wru, rru


# -- S3 ----------------------------------------------------------------------

def s3_request_class(method: str, path: str) -> str:
    """PUT (PUT, COPY, POST, LIST), GET (GET, HEAD, the rest) or FREE (DELETE), as S3
    bills them, for a path-style request (`/bucket` or `/bucket/key`): a GET of a
    bucket is a LIST."""
    if method == "DELETE":
        return "FREE"
    if method in ("PUT", "POST"):
        return "PUT"
    if method == "GET" and "/" not in path.strip("/"):
        return "PUT"
    return "GET"
