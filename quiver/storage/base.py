"""The interfaces the engine sees. Implementations: `aws.py`, `dynamo.py`, `sqs_lean.py`
(AWS) and `memory.py` (in memory, for unit tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args, runtime_checkable

from quiver.adaptive.state import RateState
from quiver.controls.model import Control
from quiver.events import Record
from quiver.tenants.keys import KeyRecord


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
    # Sent by quiver (a re-enqueue, a dead-letter copy, a redrive), not by a caller: it
    # carries COPY_ATTRIBUTE or DEAD_LETTER_ATTRIBUTE (quiver.storage.finals).
    copy: bool = False

    def without_body(self) -> Received:
        """This receipt without its SQS body: what is held while the message is worked
        on. Built directly (a per-message copy; `dataclasses.replace` costs ~4x more)."""
        return Received(body="", receipt=self.receipt, message_id=self.message_id,
                        receive_count=self.receive_count, sent_at=self.sent_at,
                        copy=self.copy)


# Set on every message quiver itself sends to the outbound queue or its DLQ, and kept
# by `quiver dlq redrive`: its final events may follow another's (quiver.storage.finals).
COPY_ATTRIBUTE = "quiver-copy"
# Set by the sender on what it dead-letters (the reason it gave up).
DEAD_LETTER_ATTRIBUTE = "quiver-reason"


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


@runtime_checkable
class BilledReceives(Protocol):
    """A queue whose receives are billed by the size of their answer (SQS's 64 KB
    chunks): it says how many messages a receive should ask for."""

    def receive_size(self, limit: int) -> int:
        """Messages to ask for, at most `limit`, that bill the fewest requests each."""
        ...


class EventSink(Protocol):
    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        """Durably accept records (all of them) or raise StorageError. `batch_id`: the
        producer's identity for these records (see quiver.events.pack_batches), so that
        publishing them again exports them once."""
        ...


class BodyStore(Protocol):
    async def get(self, uri: str, *, max_size: int) -> bytes:
        """The object's bytes; TooLarge, without reading it, if it has more than `max_size`."""
        ...

    async def put(self, key: str, data: bytes) -> str:
        """Store `data`; return its s3:// URI."""
        ...


class FinalsStore(Protocol):
    """Claims that make final events exactly-once per (message id, recipient); see
    `quiver.storage.finals` for the rules."""

    def claim(self, batch_id: str, records: Sequence[Record], *,
              producer: str | None = None) -> list[Record]:
        """The records to export: all but the final events that another batch (or this
        batch, earlier in it) has claimed; claims the rest for `batch_id` (those of a
        confirmed `producer` only where its confirmation says so). Re-running a batch
        keeps what it claimed. Synchronous: the export Lambda has no event loop."""
        ...

    async def confirm(self, producer: str, risky: Collection[str]) -> None:
        """Record that `producer`'s messages were deleted in time; the final events of
        the message ids in `risky` are still claimed. Raises StorageError."""
        ...

    async def finalized(self, message_id: str) -> set[str]:
        """Recipients of `message_id` that already have a final event."""
        ...


class Membership(Protocol):
    """This sender task's share of the fleet (1/N of every throttle for N live tasks);
    see `quiver.storage.membership` for the error bound."""

    def share(self) -> float: ...

    def position(self) -> tuple[int, int]:
        """(rank, tasks): this task's place among the live tasks, in the order every
        task sees; where a connection limit's remainder, or a limit below the task
        count, is held (quiver.scheduler.budget.task_slots)."""
        ...

    async def join(self, stop: asyncio.Event) -> None:
        """Learn this task's share before it sends anything (bounded; see the module)."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until `stop`, then leave the fleet."""
        ...


# The tenant of a suppression that applies to every tenant ("global" scope in the
# CLI and CSV). A message without a tenant is checked against these only, so what
# suppresses its recipients (a hard bounce of such a message) is written here too.
ALL_TENANTS = "*"
SuppressionReason = Literal["hard_bounce", "complaint", "unsubscribe", "manual"]
SUPPRESSION_REASONS: tuple[SuppressionReason, ...] = get_args(SuppressionReason)


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that must not be mailed (for one tenant, or for all of them)."""

    address: str  # normalised: quiver.suppression.address.suppression_address
    # One of SUPPRESSION_REASONS when written by quiver; read back as stored.
    reason: str
    created_at: float  # epoch seconds
    tenant: str = ALL_TENANTS
    # What put it there: the event ("bounced <id> ...: 550 5.1.1 ..."), an import,
    # an operator's note. Free text, for people; "" when nothing was said.
    source: str = ""
    # Epoch seconds (whole: DynamoDB's TTL reads them) after which the entry lapses;
    # None: never.
    expires_at: int | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class SuppressionStore(Protocol):
    async def lookup(
        self, addresses: Sequence[str], *, tenant: str | None
    ) -> dict[str, Suppression]:
        """The suppressed ones among `addresses`, keyed as given: entries of `tenant`
        and of ALL_TENANTS (only the latter for a message without a tenant), the
        tenant's own first. Addresses compare case-insensitively; lapsed entries are
        not suppressions. Batched: one request per 50 addresses (100 keys)."""
        ...

    async def put(self, entry: Suppression) -> None:
        """Add or replace the entry for (entry.tenant, entry.address)."""
        ...

    async def put_many(self, entries: Sequence[Suppression]) -> None:
        """`put` for each entry, in batches (the last of two for one key wins); raises
        StorageError if any could not be written (the others may have been)."""
        ...

    async def add(self, entry: Suppression, *, rewrite_own: bool = False) -> bool:
        """Write the entry unless (entry.tenant, entry.address) has one for the same
        reason already: True if written. Atomic, so of two concurrent requests to
        suppress (a double click) exactly one reports the change. With `rewrite_own`,
        an entry for the same reason whose source is entry.source (not empty) does
        not stop the write: the writer that made it is running again (an inbound
        object processed twice) and finishes what it began, with the same values."""
        ...

    async def remove(self, address: str, *, tenant: str = ALL_TENANTS) -> None:
        """Remove the entry, if any (removing a missing one is not an error)."""
        ...

    def pages(self, *, tenant: str | None) -> AsyncIterator[list[Suppression]]:
        """Every entry (lapsed ones too) of `tenant` (ALL_TENANTS for the global
        ones), or of every scope when None, a page at a time."""
        ...


# A return-path reference is kept this long after the last attempt that used it:
# DSNs come back within days, ARF complaints within weeks; later, a bounce to the
# token is refused as unknown_message (it would find nothing to act on anyway).
RETURN_PATH_TTL = 45 * 86400


@dataclass(frozen=True, slots=True)
class ReturnPathRecord:
    """What a return-path token's reference stands for (quiver.returnpath.token)."""

    reference: bytes
    message_id: str
    recipient: str
    tenant: str | None = None
    campaign: str | None = None


class ReturnPathStore(Protocol):
    """The reference → (message id, recipient, tenant, campaign) map behind return-path
    tokens, which are too short to carry them (see quiver.returnpath.token)."""

    async def put(self, records: Sequence[ReturnPathRecord]) -> None:
        """Store every record (rewriting one already there is harmless: a reference
        names one tuple) or raise StorageError; called before the mail that uses them."""
        ...

    def get(self, reference: bytes) -> ReturnPathRecord | None:
        """The record for `reference`, None if there is none (never written, or lapsed).
        Synchronous: the intake Lambdas have no event loop."""
        ...


class ControlStore(Protocol):
    """Operator controls (quiver.controls): few items, read whole by every sender on a
    short poll, written only by `quiver ctl`."""

    async def all(self) -> list[Control]:
        """Every stored control, expired ones included (the table's TTL removes them
        up to days late): readers compare `expires_at` with their clock. A strongly
        consistent read: a control written before it is in what it returns."""
        ...

    async def put(self, control: Control) -> None: ...

    async def remove(self, control_id: str) -> Control | None:
        """Delete a control; the control that was removed, None if there was none."""
        ...


class RateStore(Protocol):
    """Adaptive send rates shared by every sender (quiver.adaptive.state), beside the
    controls in the same table: read on the controls poll, written with a version
    condition by the sender that changes one."""

    async def rates(self) -> list[RateState]:
        """Every (source, provider) record; a strongly consistent read."""
        ...

    async def rate(self, source: str, provider: str) -> RateState | None: ...

    async def put_rate(self, state: RateState, *, expected: int | None) -> bool:
        """Write `state` if the stored version is `expected` (None: if there is none);
        False, nothing written, when another writer got there first."""
        ...


class TenantKeyStore(Protocol):
    """Tenants' API key records (quiver.tenants.keys): one item per key, read by the
    ingresses on every login, written only by `quiver keys`."""

    async def put_new(self, record: KeyRecord) -> bool:
        """Store `record` unless its key id is taken; False, nothing written, if it is."""
        ...

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record, revoked or not; None if there is none. Strongly consistent."""
        ...

    async def revoke(self, key_id: str, *, now: float) -> KeyRecord | None:
        """Mark the key revoked at `now` (kept if it already was); the record, None if
        there is none."""
        ...

    async def all(self) -> list[KeyRecord]: ...
