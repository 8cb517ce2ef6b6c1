"""Final-event claims (moto's DynamoDB in-process): first batch wins, re-runs keep theirs."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from quiver.finals import FinalsTable


@pytest.fixture
def table():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="finals",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST")
        yield FinalsTable(client, "finals")


def rec(event: str, rcpt: str, mid: str = "m1") -> dict:
    return {"event": event, "id": mid, "rcpt": rcpt, "at": "2026-11-26T10:00:00.000Z"}


def test_first_batch_wins_and_reruns_keep_their_records(table: FinalsTable) -> None:
    first = [rec("delivered", "a@x.test"), rec("deferred", "b@x.test"), rec("bounced", "c@x.test")]
    assert table.claim("batch1", first) == first
    assert table.claim("batch1", first) == first  # the same batch, re-run: nothing dropped
    again = [rec("delivered", "a@x.test"), rec("deferred", "b@x.test"),
             rec("expired", "b@x.test"), rec("rejected", "", mid="m2")]
    kept = table.claim("batch2", again)
    # a@ already final in batch1: dropped. Deferred records are never claimed.
    assert kept == again[1:]
    assert table.finalized("m1") == {"a@x.test", "c@x.test", "b@x.test"}
    assert table.finalized("nope") == set()


def test_duplicates_inside_one_batch_keep_the_first(table: FinalsTable) -> None:
    records = [rec("delivered", "a@x.test"), rec("delivered", "a@x.test")]
    assert table.claim("b", records) == records[:1]


def test_many_keys_span_batch_limits(table: FinalsTable) -> None:
    records = [rec("delivered", f"u{i}@x.test", mid=f"m{i % 7}") for i in range(260)]
    assert len(table.claim("big", records)) == 260
    assert table.claim("other", records) == []
