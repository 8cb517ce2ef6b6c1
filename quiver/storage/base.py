"""The interfaces the engine sees. Implementations: `aws.py` and `memory.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quiver.events import Record


class StorageError(RuntimeError):
    """A storage call that failed after its retries; the caller decides what is safe."""


class MissingObject(StorageError):
    """The object does not exist: retrying will not make it appear."""


class TooLarge(StorageError):
    """The object is larger than the caller accepts (it was not read): retrying will
    not make it smaller."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        self.size = size
        super().__init__(f"{uri}: message is {size:,} bytes, over the limit of {limit:,} "
                         "(max_message_size)")


@dataclass(frozen=True, slots=True)
class Received:
    body: str
    receipt: str
    message_id: str
    receive_count: int = 1
    sent_at: float = 0.0  # epoch seconds SQS accepted the message


@dataclass(frozen=True, slots=True)
class Outgoing:
    body: str
    delay_seconds: int = 0
    attributes: dict[str, str] = field(default_factory=dict)


class Queue(Protocol):
    async def receive(
        self, *, max_messages: int, wait_seconds: int, visibility: int
    ) -> list[Received]: ...

    async def delete(self, receipts: Sequence[str]) -> None:
        """Delete messages; raises StorageError naming any that could not be deleted."""
        ...

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None: ...

    async def send(self, messages: Sequence[Outgoing]) -> None:
        """Send all messages or raise StorageError; a partial success may leave copies."""
        ...


class EventSink(Protocol):
    async def publish(self, records: Sequence[Record]) -> None:
        """Durably accept records (all of them) or raise StorageError."""
        ...


class BodyStore(Protocol):
    async def get(self, uri: str, *, max_size: int) -> bytes:
        """The object's bytes; TooLarge, without reading it, if it has more than `max_size`."""
        ...

    async def put(self, key: str, data: bytes) -> str:
        """Store `data`; return its s3:// URI."""
        ...
