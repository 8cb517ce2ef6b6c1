"""SQS batching, for every sender of SQS messages (the sender's queues, QuiverClient).

SendMessageBatch takes at most 10 entries and 256 KiB in one request, message
attributes included; the chunker keeps a margin under the byte cap for the
request's own JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from quiver.storage.base import Outgoing

T = TypeVar("T")

SQS_BATCH = 10
# SendMessageBatch also caps the whole request at 256 KiB.
SQS_BATCH_BYTES = 250 * 1024


def text_size(text: str) -> int:
    """Bytes of `text` as SQS counts them (UTF-8)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def outgoing_size(message: Outgoing) -> int:
    """A message's size towards SQS's limit: attribute names and values count too."""
    return text_size(message.body) + sum(
        text_size(k) + text_size(v) + 6 for k, v in message.attributes.items()
    )


def chunk(items: Sequence[T], size: Callable[[T], int]) -> list[list[T]]:
    """Split into SendMessageBatch requests: ≤ SQS_BATCH entries and ≤ SQS_BATCH_BYTES
    each (an item over the byte cap alone goes alone, for SQS to refuse)."""
    chunks: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if current and (len(current) == SQS_BATCH or total + n > SQS_BATCH_BYTES):
            chunks.append(current)
            current, total = [], 0
        current.append(item)
        total += n
    if current:
        chunks.append(current)
    return chunks


def chunk_messages(messages: Sequence[Outgoing]) -> list[list[Outgoing]]:
    return chunk(messages, outgoing_size)
