"""Return paths against moto's server over HTTP: the key ring read from Secrets
Manager through the sender's secret reader, and the reference store in DynamoDB
answering as its in-memory fake does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from moto_tables import fresh_table

from quiver.devstack.moto_server import MotoServer, client, session, start_moto
from quiver.returnpath import (
    KeyRingError,
    ReturnPaths,
    ReturnPathVerifier,
    Verified,
    dump_key_ring,
    load_key_ring,
    rotated,
)
from quiver.returnpath.refresh import KeyRingRefresher
from quiver.storage.aws import secret_reader
from quiver.storage.base import ReturnPathRecord, ReturnPathStore, StorageError
from quiver.storage.dynamo import DynamoReturnPaths
from quiver.storage.memory import MemoryReturnPaths

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("return-path"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest, clock: Clock) -> ReturnPathStore:
    if request.param == "memory":
        return MemoryReturnPaths(clock=clock)
    server = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    return DynamoReturnPaths(ddb, fresh_table(ddb, "finals"), clock=clock)


def record(i: int, *, tenant: str | None = "acme", campaign: str | None = None
           ) -> ReturnPathRecord:
    return ReturnPathRecord(reference=i.to_bytes(12, "big"), message_id=f"m-{i}",
                            recipient=f"User{i}@Example.org", tenant=tenant, campaign=campaign)


def test_records_come_back_as_stored_none_and_empty_kept_apart(store: ReturnPathStore) -> None:
    records = [record(i, tenant=None if i % 3 == 0 else "acme",
                      campaign="" if i % 2 else None) for i in range(60)]
    asyncio.run(store.put(records))  # more than one BatchWriteItem
    for r in records:
        assert store.get(r.reference) == r
    assert store.get(b"\xff" * 12) is None


def test_a_put_again_rewrites_and_a_lapsed_record_is_gone(
        store: ReturnPathStore, clock: Clock) -> None:
    asyncio.run(store.put([record(1), record(1)]))  # the same reference twice in a batch
    clock.now += 44 * DAY
    asyncio.run(store.put([record(1)]))  # a retry refreshes it
    clock.now += 44 * DAY
    assert store.get(record(1).reference) == record(1)
    clock.now += 2 * DAY
    assert store.get(record(1).reference) is None


def reader(moto: MotoServer, monkeypatch: pytest.MonkeyPatch):
    """The sender's reader, on a session that finds moto's server as a sender process
    does (AWS_ENDPOINT_URL)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    return secret_reader(session(moto.endpoint))


def test_the_key_ring_is_read_from_secrets_manager_and_a_rotation_is_picked_up(
        moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sm = client(moto.endpoint, "secretsmanager")
    secret_id = f"quiver/return-path/{uuid.uuid4().hex[:8]}"
    first = rotated(None, now=T0 - DAY)
    sm.create_secret(Name=secret_id, SecretString=dump_key_ring(first))
    read = reader(moto, monkeypatch)

    def load():
        return load_key_ring(key_secret=secret_id, read_secret=read)

    ring = load()
    assert ring.keys == first.keys
    clock = Clock()
    store = MemoryReturnPaths(clock=clock)
    paths = ReturnPaths(ring, clock=clock)
    address, rec = paths.address(bounce_domain="bounces.example.com", message_id="m-1",
                                 recipient="bob@example.org", tenant=None, campaign=None)
    asyncio.run(store.put([rec]))

    # `quiver return-path rotate` writes the rotated ring as a new secret version.
    second = rotated(ring, now=T0)
    sm.put_secret_value(SecretId=secret_id, SecretString=dump_key_ring(second))

    def apply(new) -> None:
        paths.ring = new

    assert asyncio.run(KeyRingRefresher(load, apply).refresh())
    assert paths.ring.signing(T0).id == 2
    verifier = ReturnPathVerifier(keys=lambda: paths.ring, store=store,
                                  bounce_domains={"bounces.example.com": None}, clock=clock)
    result = verifier.verify(address)  # signed by key 1, retired now: still verifies
    assert isinstance(result, Verified) and result.key_id == 1


def test_a_missing_or_broken_secret_says_which_and_the_refresher_keeps_the_ring(
        moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    read = reader(moto, monkeypatch)
    with pytest.raises(KeyRingError, match="return-path key_secret quiver/nope: cannot read"):
        load_key_ring(key_secret="quiver/nope", read_secret=read)
    sm = client(moto.endpoint, "secretsmanager")
    secret_id = f"quiver/return-path/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=secret_id, SecretString='{"keys": "no"}')
    with pytest.raises(KeyRingError, match=f"key_secret {secret_id}: expected"):
        load_key_ring(key_secret=secret_id, read_secret=read)
    applied: list[object] = []
    refresher = KeyRingRefresher(lambda: load_key_ring(key_secret=secret_id, read_secret=read),
                                 applied.append)
    assert not asyncio.run(refresher.refresh()) and applied == []


def test_the_rotate_command_creates_then_rotates_the_secret(
        moto: MotoServer, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from quiver.devstack.moto_server import aws_env

    secret_id = f"quiver/return-path/{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **aws_env(moto.endpoint)}

    def rotate() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "quiver", "return-path", "rotate", "--secret-id", secret_id],
            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "key 1 signs from now on" in rotate()
    assert "key 2 signs in 900 s" in rotate()
    sm = client(moto.endpoint, "secretsmanager")
    from quiver.returnpath import parse_key_ring

    ring = parse_key_ring(sm.get_secret_value(SecretId=secret_id)["SecretString"])
    assert [(k.id, k.retired is not None) for k in ring.keys] == [(1, True), (2, False)]
    # Key 1 signs until key 2 starts, 15 minutes on: both are read by then.
    first, second = ring.keys
    assert first.retired == second.created
    assert ring.signing(second.created - 1).id == 1 and ring.signing(second.created).id == 2


class CountingClient:
    """moto's DynamoDB client, counting the BatchWriteItem calls made through it."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.batch_writes = 0

    def batch_write_item(self, **kwargs):
        self.batch_writes += 1
        return self._inner.batch_write_item(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def test_puts_of_concurrent_messages_share_batch_writes(moto: MotoServer) -> None:
    ddb = client(moto.endpoint, "dynamodb")
    name = f"finals-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST")
    counting = CountingClient(ddb)
    store = DynamoReturnPaths(counting, name, linger=0.05)

    async def sixty_messages() -> None:
        await asyncio.gather(*(store.put([record(i)]) for i in range(60)))

    asyncio.run(sixty_messages())
    assert counting.batch_writes == 3  # 25 + 25 + the 10 left when the linger ends
    assert all(store.get(record(i).reference) == record(i) for i in range(60))


def test_a_failed_batch_write_fails_every_put_that_waited_on_it(moto: MotoServer) -> None:
    store = DynamoReturnPaths(client(moto.endpoint, "dynamodb"), "no-such-table")

    async def three() -> list[BaseException | None]:
        return await asyncio.gather(*(store.put([record(i)]) for i in range(3)),
                                    return_exceptions=True)

    results = asyncio.run(three())
    assert all(isinstance(r, StorageError) for r in results), results
