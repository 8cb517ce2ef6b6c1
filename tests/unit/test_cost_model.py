"""bench/cost_model.py: what AWS bills per call (SQS 64 KB chunks, DynamoDB request
units, S3 request classes) and the price table, with a clear error on a broken one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import cost_model
from cost_model import (
    PriceError,
    dynamodb_units,
    item_size,
    load_prices,
    read_units,
    s3_request_class,
    sqs_billed_requests,
    write_units,
)

KB = 1024


@pytest.mark.parametrize(("payload", "billed"), [
    (0, 1), (1, 1), (64 * KB - 1, 1), (64 * KB, 1), (64 * KB + 1, 2), (256 * KB, 4),
    (256 * KB + 1, 5),
])
def test_sqs_bills_a_request_per_started_64_kb(payload: int, billed: int) -> None:
    assert sqs_billed_requests(payload) == billed


@given(st.integers(0, 10 * 1024 * KB))
def test_sqs_chunks_cover_the_payload_and_no_more(payload: int) -> None:
    billed = sqs_billed_requests(payload)
    assert billed >= 1 and (billed - 1) * 64 * KB < max(payload, 1) <= billed * 64 * KB


@pytest.mark.parametrize(("size", "wru"), [(0, 1), (1, 1), (KB, 1), (KB + 1, 2), (3 * KB, 3)])
def test_write_units_per_started_kb(size: int, wru: int) -> None:
    assert write_units(size) == wru


@pytest.mark.parametrize(("size", "consistent", "rru"), [
    (0, True, 1.0), (4 * KB, True, 1.0), (4 * KB + 1, True, 2.0), (0, False, 0.5),
    (9 * KB, False, 1.5),
])
def test_read_units_per_started_4_kb_half_when_eventual(size: int, consistent: bool,
                                                        rru: float) -> None:
    assert read_units(size, consistent=consistent) == rru


def test_item_size_counts_names_and_values() -> None:
    item = {"pk": {"S": "final#m1"}, "sk": {"S": "a@x.test"}, "n": {"N": "1234"},
            "ok": {"BOOL": True}, "l": {"L": [{"S": "ab"}]}}
    assert item_size(item) == (2 + 8) + (2 + 8) + (1 + 3) + (2 + 1) + (1 + 3 + 1 + 2)


def test_dynamodb_calls_as_billed() -> None:
    small = {"pk": {"S": "x"}}
    big = {"pk": {"S": "x" * (2 * KB)}}
    writes = {"RequestItems": {"t": [{"PutRequest": {"Item": small}},
                                     {"PutRequest": {"Item": big}}]}}
    assert dynamodb_units("BatchWriteItem", writes, {}) == (4.0, 0.0)
    # An unprocessed item is not billed.
    assert dynamodb_units("BatchWriteItem", writes, {"UnprocessedItems": {"t": [
        {"PutRequest": {"Item": big}}]}}) == (1.0, 0.0)
    gets = {"RequestItems": {"t": {"Keys": [small, small, small], "ConsistentRead": True}}}
    # One found, two not there: each costs a read unit all the same.
    assert dynamodb_units("BatchGetItem", gets, {"Responses": {"t": [small]}}) == (0.0, 3.0)
    assert dynamodb_units("Query", {}, {"Items": [big, big, big]}) == (0.0, 1.0)
    assert dynamodb_units("PutItem", {"Item": small}, {}) == (1.0, 0.0)
    assert dynamodb_units("TransactWriteItems", {"TransactItems": [{"Put": {"Item": small}}]},
                          {}) == (2.0, 0.0)


def test_s3_request_classes() -> None:
    assert s3_request_class("PUT", "/events/a/b.jsonl.gz") == "PUT"
    assert s3_request_class("GET", "/events") == "PUT"  # a LIST
    assert s3_request_class("GET", "/spill/retry/x.eml") == "GET"
    assert s3_request_class("HEAD", "/spill/x") == "GET"
    assert s3_request_class("DELETE", "/spill/x") == "FREE"


def test_the_committed_price_table_loads_with_its_date() -> None:
    prices = load_prices()
    assert prices.recorded and prices.sqs_request == pytest.approx(0.40e-6)
    assert prices.ddb_write_unit == pytest.approx(0.625e-6)
    assert prices.fargate_vcpu_s["x86_64"] == pytest.approx(0.04048 / 3600)


@pytest.mark.parametrize(("text", "message"), [
    ("this is = not [toml", "not valid TOML"),
    ('recorded = "2026-12-05"\n[sqs]\nusd_per_million_requests = "cheap"\n',
     "[sqs] usd_per_million_requests must be a number"),
    ("[sqs]\nusd_per_million_requests = 0.4\n", "`recorded`"),
])
def test_a_broken_price_table_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceError) as caught:
        load_prices(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_missing_price_table_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="cannot read"):
        load_prices(tmp_path / "absent.toml")


def test_a_price_removed_from_the_committed_table_is_named(tmp_path: Path) -> None:
    text = cost_model.PRICES.read_text().replace("usd_per_million_write_units = 0.625\n", "")
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceError, match=r"\[dynamodb\] usd_per_million_write_units"):
        load_prices(path)
