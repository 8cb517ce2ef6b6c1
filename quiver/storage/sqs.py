"""SQS batching, for every sender of SQS messages (the sender's queues, QuiverClient).

SendMessageBatch takes at most 10 entries and 256 KiB in one request, message
attributes included; the chunker keeps a margin under the byte cap for the
request's own JSON.

SQS bills a request per started 64 KB of its payload: ten 7 KB messages in one
batch are 70 KB, two billed requests, while nine fit in one. So the chunker splits
a call's entries, in order, into the batches that bill the fewest chunks in all
(25 such messages: 9 + 9 + 7, three billed requests instead of five), and then
into the fewest requests (ten of them alone stay one batch). `receive_count`
makes the same choice for ReceiveMessage, whose answer is the payload billed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from quiver.storage.base import Outgoing

T = TypeVar("T")

# One billed request per started chunk of payload.
BILLING_CHUNK = 64 * 1024
# What a request's JSON adds around its entries (QueueUrl and Entries; each
# entry's Id and MessageBody keys), counted against the chunk so that a batch
# planned as one chunk is one; `wire_size` counts the escapes inside a body.
REQUEST_OVERHEAD = 256
ENTRY_OVERHEAD = 64

SQS_BATCH = 10
# SendMessageBatch also caps the whole request at 256 KiB.
SQS_BATCH_BYTES = 250 * 1024


def text_size(text: str) -> int:
    """Bytes of `text` as SQS counts them (UTF-8)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def wire_size(text: str) -> int:
    """Bytes of `text` in a JSON request: a JSON body's quotes and backslashes are
    sent escaped, two bytes each."""
    return text_size(text) + text.count('"') + text.count("\\")


def outgoing_size(message: Outgoing) -> int:
    """A message's size towards SQS's limit: attribute names and values count too."""
    return wire_size(message.body) + sum(
        text_size(k) + text_size(v) + 6 for k, v in message.attributes.items()
    )


def billed_chunks(payload: int) -> int:
    """Requests SQS bills for a payload of `payload` bytes (at least one)."""
    return max(1, -(-payload // BILLING_CHUNK))


def _cheapest_prefix(totals: Sequence[int]) -> int:
    """Of prefixes whose payloads are `totals` (cumulative, growing), the length that
    bills the fewest requests per entry; the longer one on a tie."""
    best_len, best_billed = 1, billed_chunks(totals[0])
    for length, total in enumerate(totals[1:], start=2):
        billed = billed_chunks(total)
        # billed / length <= best_billed / best_len, in integers.
        if billed * best_len <= best_billed * length:
            best_len, best_billed = length, billed
    return best_len


def chunk(items: Sequence[T], size: Callable[[T], int]) -> list[list[T]]:
    """Split into SendMessageBatch requests: ≤ SQS_BATCH entries and ≤ SQS_BATCH_BYTES
    each (an item over the byte cap alone goes alone, for SQS to refuse), in order,
    billing the fewest 64 KB chunks in all, then in the fewest requests."""
    sizes = [size(item) for item in items]
    count = len(items)
    # cost[i]: (billed chunks, requests) of the best split of items[i:]; take[i]: the
    # length of its first batch. Worked back from the end, ten choices per item.
    cost: list[tuple[int, int]] = [(0, 0)] * (count + 1)
    take = [0] * count
    for first in range(count - 1, -1, -1):
        best: tuple[int, int] | None = None
        total = 0
        for last in range(first, min(count, first + SQS_BATCH)):
            if last > first and total + sizes[last] > SQS_BATCH_BYTES:
                break
            total += sizes[last]
            entries = last - first + 1
            rest = cost[last + 1]
            option = (billed_chunks(REQUEST_OVERHEAD + total + ENTRY_OVERHEAD * entries)
                      + rest[0], rest[1] + 1)
            if best is None or option <= best:  # on a tie, the longer first batch
                best, take[first] = option, entries
        assert best is not None
        cost[first] = best
    chunks: list[list[T]] = []
    start = 0
    while start < count:
        chunks.append(list(items[start:start + take[start]]))
        start += take[start]
    return chunks


def receive_count(limit: int, bytes_per_message: float | None) -> int:
    """MaxNumberOfMessages for a ReceiveMessage of at most `limit` whose answer bills
    the fewest requests per message, given the answer's bytes per message seen so far
    (None: nothing seen yet, ask for `limit`)."""
    limit = max(1, min(SQS_BATCH, limit))
    if not bytes_per_message:
        return limit
    return _cheapest_prefix([REQUEST_OVERHEAD + round(bytes_per_message * n)
                             for n in range(1, limit + 1)])


def chunk_messages(messages: Sequence[Outgoing]) -> list[list[Outgoing]]:
    return chunk(messages, outgoing_size)
