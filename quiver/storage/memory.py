"""In-memory storage for unit tests: the same interfaces, SQS-like visibility semantics.

tests/integration/test_storage_contract.py runs the same assertions against these
and the DynamoDB stores, so a fake cannot drift from what it stands for.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from quiver.adaptive.state import RateState
from quiver.controls.model import Control
from quiver.envelope import parse_s3_uri
from quiver.events import Record
from quiver.storage.base import (
    ALL_TENANTS,
    RETURN_PATH_TTL,
    MissingObject,
    Outgoing,
    Received,
    ReturnPathRecord,
    StorageError,
    Suppression,
    TooLarge,
)
from quiver.storage.finals import Claim, claim_batch
from quiver.storage.membership import HeartbeatMembership
from quiver.tenants.keys import KeyRecord


@dataclass
class _Message:
    message_id: str
    body: str
    visible_at: float
    sent_at: float
    attributes: dict[str, str]
    receipt: str = ""
    receive_count: int = 0


class MemoryQueue:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._messages: dict[str, _Message] = {}
        self._ids = itertools.count(1)
        self._receipts = itertools.count(1)

    def __len__(self) -> int:
        return len(self._messages)

    def bodies(self) -> list[str]:
        return [m.body for m in self._messages.values()]

    def attributes(self) -> list[dict[str, str]]:
        return [m.attributes for m in self._messages.values()]

    def in_flight(self) -> int:
        now = time.monotonic()
        return sum(1 for m in self._messages.values() if m.visible_at > now)

    async def receive(
        self, *, max_messages: int, wait_seconds: int, visibility: int
    ) -> list[Received]:
        deadline = time.monotonic() + wait_seconds
        while True:
            now = time.monotonic()
            out: list[Received] = []
            for m in self._messages.values():
                if len(out) >= max_messages:
                    break
                if m.visible_at <= now:
                    m.visible_at = now + visibility
                    m.receive_count += 1
                    m.receipt = f"{m.message_id}#{next(self._receipts)}"
                    out.append(Received(
                        body=m.body, receipt=m.receipt, message_id=m.message_id,
                        receive_count=m.receive_count, sent_at=m.sent_at,
                    ))
            if out or now >= deadline:
                return out
            await asyncio.sleep(min(0.02, deadline - now))

    def _by_receipt(self, receipt: str) -> _Message:
        message_id = receipt.partition("#")[0]
        m = self._messages.get(message_id)
        if m is None or m.receipt != receipt:
            raise StorageError(f"receipt handle {receipt!r} is not current")
        return m

    async def delete(self, receipts: Sequence[str]) -> None:
        for r in receipts:
            self._messages.pop(self._by_receipt(r).message_id)

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        for r in receipts:
            self._by_receipt(r).visible_at = time.monotonic() + seconds

    async def send(self, messages: Sequence[Outgoing]) -> None:
        for m in messages:
            message_id = f"{self.name}-{next(self._ids)}"
            self._messages[message_id] = _Message(
                message_id=message_id, body=m.body,
                visible_at=time.monotonic() + m.delay_seconds, sent_at=time.time(),
                attributes=dict(m.attributes),
            )


class MemoryEventSink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        # Each publish: the batch id it gave (None: the sink chose one) and its records.
        self.published: list[tuple[str | None, list[Record]]] = []
        self.fail_next = 0  # tests set this to make the next publishes fail

    async def publish(self, records: Sequence[Record], *, batch_id: str | None = None) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise StorageError("events sink unavailable (test)")
        self.records.extend(records)
        self.published.append((batch_id, list(records)))

    def exported(self) -> list[Record]:
        """The records as the export writes them: a batch id published again rewrites
        the same objects, so its records count once (the last copy)."""
        named: dict[str, list[Record]] = {}
        out: list[Record] = []
        for batch_id, records in self.published:
            if batch_id is None:
                out.extend(records)
            else:
                named[batch_id] = records
        return out + [r for records in named.values() for r in records]


class MemoryBodyStore:
    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}
        # Raised by every put while set: a spill bucket that cannot be written.
        self.fail_put: StorageError | None = None

    async def put(self, key: str, data: bytes) -> str:
        if self.fail_put is not None:
            raise self.fail_put
        self.objects[key] = data
        return f"s3://{self.bucket}/{key}"

    async def get(self, uri: str, *, max_size: int) -> bytes:
        bucket, key = parse_s3_uri(uri)
        if bucket != self.bucket or key not in self.objects:
            raise MissingObject(f"{uri}: no such object")
        data = self.objects[key]
        if len(data) > max_size:
            raise TooLarge(uri, len(data), max_size)
        return data


class MemoryFinals:
    """Final-event claims in a dict: {(message id, recipient): claiming batch id}."""

    def __init__(self) -> None:
        self.claims: dict[Claim, str] = {}

    def claim(self, batch_id: str, records: Sequence[Record]) -> list[Record]:
        return claim_batch(batch_id, records, claimed_by=self._claimed_by, write=self._write)

    def _claimed_by(self, keys: list[Claim]) -> dict[Claim, str]:
        return {k: self.claims[k] for k in keys if k in self.claims}

    def _write(self, batch_id: str, items: list[tuple[Claim, Record]]) -> None:
        for key, _ in items:
            self.claims[key] = batch_id

    async def finalized(self, message_id: str) -> set[str]:
        return {rcpt for m, rcpt in self.claims if m == message_id}


class MemoryFleet:
    """The heartbeats of several MemoryMembership tasks, on an injected clock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.heartbeats: dict[str, float] = {}

    def member(self, task_id: str, *, interval: float = 10.0, stale: float = 30.0
               ) -> MemoryMembership:
        return MemoryMembership(fleet=self, task_id=task_id, interval=interval, stale=stale)


class MemoryMembership(HeartbeatMembership):
    def __init__(self, *, fleet: MemoryFleet, task_id: str, interval: float = 10.0,
                 stale: float = 30.0) -> None:
        super().__init__(task_id=task_id, interval=interval, stale=stale)
        self.fleet = fleet

    async def beat(self) -> list[str]:
        now = self.fleet.clock()
        self.fleet.heartbeats[self.task_id] = now
        return [task for task, at in self.fleet.heartbeats.items() if at > now - self.stale]

    async def leave(self) -> None:
        self.fleet.heartbeats.pop(self.task_id, None)


class MemorySuppression:
    """The suppression list in a dict keyed (tenant, lower-cased address). `fail`, when
    set, is raised by every call (a throttled or unreachable table); `calls` counts
    lookups and `keys` the keys they asked for, as BatchGetItem would be billed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.entries: dict[tuple[str, str], Suppression] = {}
        self.fail: StorageError | None = None
        self.calls = 0
        self.keys = 0
        self.writes = 0

    async def lookup(
        self, addresses: Sequence[str], *, tenant: str | None
    ) -> dict[str, Suppression]:
        if self.fail is not None:
            raise self.fail
        tenants = [t for t in dict.fromkeys((tenant, ALL_TENANTS)) if t is not None]
        self.calls += 1
        self.keys += len(tenants) * len({a.lower() for a in addresses})
        now = self._clock()
        out: dict[str, Suppression] = {}
        for address in addresses:
            for t in tenants:
                entry = self.entries.get((t, address.lower()))
                if entry is not None and entry.active(now):
                    out[address] = entry
                    break
        return out

    async def put(self, entry: Suppression) -> None:
        await self.put_many([entry])

    async def put_many(self, entries: Sequence[Suppression]) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes += 1
        for entry in entries:
            address = entry.address.lower()
            self.entries[(entry.tenant, address)] = replace(entry, address=address)

    async def add(self, entry: Suppression, *, rewrite_own: bool = False) -> bool:
        if rewrite_own and not entry.source:
            raise ValueError("rewrite_own needs the entry's source: it tells its own apart")
        if self.fail is not None:
            raise self.fail
        old = self.entries.get((entry.tenant, entry.address.lower()))
        own = rewrite_own and old is not None and old.source == entry.source
        if old is not None and old.reason == entry.reason and not own:
            return False
        await self.put(entry)
        return True

    async def remove(self, address: str, *, tenant: str = ALL_TENANTS) -> None:
        if self.fail is not None:
            raise self.fail
        self.entries.pop((tenant, address.lower()), None)

    async def pages(self, *, tenant: str | None) -> AsyncIterator[list[Suppression]]:
        if self.fail is not None:
            raise self.fail
        entries = [e for (t, _), e in sorted(self.entries.items())
                   if tenant is None or t == tenant]
        for start in range(0, len(entries), 100):
            yield entries[start:start + 100]


class MemoryReturnPaths:
    """Return-path references in a dict; each lapses RETURN_PATH_TTL after its last put."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.records: dict[bytes, tuple[ReturnPathRecord, float]] = {}
        self.puts = 0  # calls, as a DynamoDB store would bill them (per 25 records)

    async def put(self, records: Sequence[ReturnPathRecord]) -> None:
        expires = self._clock() + RETURN_PATH_TTL
        for start in range(0, len(records), 25):
            self.puts += 1
            for record in records[start:start + 25]:
                self.records[record.reference] = (record, expires)

    def get(self, reference: bytes) -> ReturnPathRecord | None:
        found = self.records.get(reference)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]


class MemoryControls:
    """Operator controls in a dict by id. `fail`, when set, is raised by every call
    (an unreachable table); `reads` counts `all` calls (a poll each)."""

    def __init__(self) -> None:
        self.controls: dict[str, Control] = {}
        self.rate_states: dict[str, RateState] = {}
        self.fail: StorageError | None = None
        self.reads = 0

    async def all(self) -> list[Control]:
        if self.fail is not None:
            raise self.fail
        self.reads += 1
        return [self.controls[k] for k in sorted(self.controls)]

    async def put(self, control: Control) -> None:
        if self.fail is not None:
            raise self.fail
        if control.expires_at is not None:
            # As DynamoControls keeps it: whole seconds, rounded up.
            control = replace(control, expires_at=float(math.ceil(control.expires_at)))
        self.controls[control.id] = control

    async def remove(self, control_id: str) -> Control | None:
        if self.fail is not None:
            raise self.fail
        return self.controls.pop(control_id, None)

    # RateStore: the adaptive rates kept beside the controls, as in the one table.
    async def rates(self) -> list[RateState]:
        if self.fail is not None:
            raise self.fail
        return [self.rate_states[k] for k in sorted(self.rate_states)]

    async def rate(self, source: str, provider: str) -> RateState | None:
        if self.fail is not None:
            raise self.fail
        return self.rate_states.get(f"{source}|{provider}")

    async def put_rate(self, state: RateState, *, expected: int | None) -> bool:
        if self.fail is not None:
            raise self.fail
        stored = self.rate_states.get(state.key)
        if (stored.version if stored is not None else None) != expected:
            return False
        self.rate_states[state.key] = state
        return True


class MemoryTenantKeys:
    """`TenantKeyStore` in a dict."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}

    async def put_new(self, record: KeyRecord) -> bool:
        if record.key_id in self.records:
            return False
        self.records[record.key_id] = record
        return True

    async def get(self, key_id: str) -> KeyRecord | None:
        return self.records.get(key_id)

    async def revoke(self, key_id: str, *, now: float) -> KeyRecord | None:
        record = self.records.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = self.records[key_id] = replace(record, revoked_at=now)
        return record

    async def all(self) -> list[KeyRecord]:
        return list(self.records.values())
