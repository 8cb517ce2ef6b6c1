"""The interfaces the engine sees. Implementations: `aws.py` and `memory.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quiver.events import Record

# A message body fetched from S3 larger than this is refused: the biggest
# providers reject mail above ~35-50 MB, and holding it costs the whole engine.
MAX_MESSAGE_BYTES = 40 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage call that failed after its retries; the caller decides what is safe."""


class MissingObject(StorageError):
    """The object does not exist: retrying will not make it appear."""


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
    async def get(self, uri: str) -> bytes: ...

    async def put(self, key: str, data: bytes) -> str:
        """Store `data`; return its s3:// URI."""
        ...
