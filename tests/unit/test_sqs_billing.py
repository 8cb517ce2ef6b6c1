"""SQS batches planned in 64 KB billing chunks: a call's entries split into the
batches that bill the fewest chunks, then the fewest requests, and a receive asks
for as many messages as fill whole chunks of its answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.storage.sqs import (
    BILLING_CHUNK,
    ENTRY_OVERHEAD,
    REQUEST_OVERHEAD,
    SQS_BATCH,
    SQS_BATCH_BYTES,
    billed_chunks,
    chunk,
    receive_count,
)
from quiver.storage.sqs_lean import LeanSqsQueue

KB = 1024


def billed(batches: list[list[int]]) -> int:
    """Requests billed for the batches, with the overheads the planner counts."""
    return sum(billed_chunks(REQUEST_OVERHEAD + sum(b) + ENTRY_OVERHEAD * len(b))
               for b in batches)


def greedy(sizes: list[int]) -> list[list[int]]:
    """The split before billing was counted: each batch as full as the API allows."""
    out: list[list[int]] = []
    for size in sizes:
        if out and (len(out[-1]) == SQS_BATCH or sum(out[-1]) + size > SQS_BATCH_BYTES):
            out.append([])
        if not out:
            out.append([])
        out[-1].append(size)
    return out


def test_billed_chunks_start_a_request_per_64_kb() -> None:
    assert [billed_chunks(n) for n in (0, 1, BILLING_CHUNK, BILLING_CHUNK + 1)] == [1, 1, 1, 2]


def test_seven_kb_messages_go_nine_to_a_batch_and_the_last_batch_is_whole() -> None:
    sizes = [7000] * 25
    batches = chunk(sizes, lambda n: n)
    assert [len(b) for b in batches] == [9, 9, 7]
    assert billed(batches) == 3  # ten to a batch: 2 + 2 + 1 = 5
    assert billed(greedy(sizes)) == 5
    # Ten of them with nothing after go in one request: cutting would not bill less.
    assert [len(b) for b in chunk([7000] * 10, lambda n: n)] == [10]


def test_small_messages_still_go_ten_to_a_batch() -> None:
    assert [len(b) for b in chunk([1000] * 25, lambda n: n)] == [10, 10, 5]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 2 * KB), st.integers(5 * KB, 9 * KB),
                          st.integers(20 * KB, 70 * KB), st.integers(1, 260 * KB)),
                max_size=60))
def test_batches_keep_every_entry_in_order_within_the_api_limits(sizes: list[int]) -> None:
    batches = chunk(sizes, lambda n: n)
    assert [n for b in batches for n in b] == sizes
    for batch in batches:
        assert 1 <= len(batch) <= SQS_BATCH
        assert len(batch) == 1 or sum(batch) <= SQS_BATCH_BYTES


SIZES = st.lists(st.one_of(st.integers(1, 2 * KB), st.integers(5 * KB, 9 * KB),
                           st.integers(20 * KB, 70 * KB)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(SIZES)
def test_never_billed_more_than_full_batches(sizes: list[int]) -> None:
    batches, full = chunk(sizes, lambda n: n), greedy(sizes)
    assert billed(batches) < billed(full) or (
        billed(batches) == billed(full) and len(batches) <= len(full))


@settings(max_examples=200, deadline=None)
@given(SIZES.filter(lambda sizes: len(sizes) <= 8))
def test_no_split_bills_fewer_chunks(sizes: list[int]) -> None:
    def splits(rest: list[int]) -> list[list[list[int]]]:
        if not rest:
            return [[]]
        return [[rest[:n], *tail] for n in range(1, min(SQS_BATCH, len(rest)) + 1)
                if n == 1 or sum(rest[:n]) <= SQS_BATCH_BYTES for tail in splits(rest[n:])]

    assert billed(chunk(sizes, lambda n: n)) == min(billed(s) for s in splits(sizes))


def test_a_receive_asks_for_what_fills_whole_chunks() -> None:
    assert receive_count(10, None) == 10  # nothing seen yet
    assert receive_count(10, 2 * KB) == 10
    assert receive_count(10, 7.5 * KB) == 8  # 60 KB: one billed request, not two for 10
    assert receive_count(4, 7.5 * KB) == 4  # never more than asked
    assert receive_count(0, None) == 1
    assert receive_count(99, None) == SQS_BATCH


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.floats(1, 300 * KB))
def test_a_receive_bills_no_more_per_message_than_asking_for_all(limit: int, per: float
                                                               ) -> None:
    def per_message(n: int) -> float:
        return billed_chunks(REQUEST_OVERHEAD + round(per * n)) / n

    count = receive_count(limit, per)
    assert 1 <= count <= limit
    assert per_message(count) <= per_message(limit)


class AnsweringClient:
    """Stands in for LeanSqsClient: answers every ReceiveMessage with as many messages
    of `body_bytes` as asked for, and records what was asked."""

    def __init__(self, body_bytes: int) -> None:
        self.body = "x" * body_bytes
        self.asked: list[int] = []

    async def call(self, *, url: str, action: str, payload: Mapping[str, Any],
                   wait_seconds: int = 0) -> bytes:
        count = int(payload["MaxNumberOfMessages"])
        self.asked.append(count)
        return json.dumps({"Messages": [
            {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": self.body}
            for i in range(count)]}).encode()


def test_the_queue_learns_its_answers_size_and_asks_for_whole_chunks() -> None:
    client = AnsweringClient(9 * KB)
    queue = LeanSqsQueue(client, "http://127.0.0.1:4566/123456789012/outbound")  # type: ignore[arg-type]

    async def three() -> None:
        for _ in range(3):
            await queue.receive(max_messages=10, wait_seconds=0, visibility=30)

    asyncio.run(three())
    # Nothing known at first; then 9 KB answers: seven fill one chunk, ten would bill two.
    assert client.asked == [10, 7, 7]
    assert queue.receive_size(10) == 7 and queue.receive_size(3) == 3


def test_the_receive_size_is_worked_out_once_per_answer_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender asks for the receive size on every completion: the plan is kept
    until a receive changes the bytes per message, and follows it when it does."""
    import quiver.storage.sqs_lean as lean

    worked: list[tuple[int, float | None]] = []

    def counting(limit: int, per: float | None) -> int:
        worked.append((limit, per))
        return receive_count(limit, per)

    monkeypatch.setattr(lean, "receive_count", counting)
    client = AnsweringClient(9 * KB)
    queue = LeanSqsQueue(client, "http://127.0.0.1:4566/123456789012/outbound")  # type: ignore[arg-type]
    assert [queue.receive_size(10) for _ in range(50)] == [10] * 50
    assert worked == [(10, None)]
    asyncio.run(queue.receive(max_messages=10, wait_seconds=0, visibility=30))
    assert [queue.receive_size(10) for _ in range(50)] == [7] * 50
    assert queue.receive_size(3) == 3
    assert [limit for limit, _ in worked] == [10, 10, 3]
    # An answer of another size moves the figure: worked out again, for it.
    client.body = "x" * (2 * KB)
    asyncio.run(queue.receive(max_messages=10, wait_seconds=0, visibility=30))
    assert queue.receive_size(10) == receive_count(10, queue.bytes_per_message)
    assert worked[-1] == (10, queue.bytes_per_message)
