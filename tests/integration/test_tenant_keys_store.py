"""The tenant keys store: the in-memory fake and the DynamoDB store on moto's server
answer alike (create once per id, revoke keeps the first time, list, verify), and the
DynamoDB item holds the digest, never the key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from moto_tables import fresh_table

from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.storage.base import TenantKeyStore
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.storage.memory import MemoryTenantKeys
from quiver.tenants.keys import KeyRecord, TenantKeys

pytestmark = pytest.mark.integration
T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("keys"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> TenantKeyStore:
    if request.param == "memory":
        return MemoryTenantKeys()
    server = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    return DynamoTenantKeys(ddb, fresh_table(ddb, "tenant-keys"))


def test_the_store_contract(store: TenantKeyStore) -> None:
    async def run() -> None:
        record = KeyRecord(key_id="0123456789abcdef", tenant="acme", digest="d" * 64,
                           created_at=T0, who="ops")
        assert await store.put_new(record)
        assert not await store.put_new(KeyRecord(key_id="0123456789abcdef", tenant="shop",
                                                 digest="e" * 64, created_at=T0, who="x"))
        assert await store.get("0123456789abcdef") == record
        assert await store.get("fedcba9876543210") is None
        assert await store.revoke("fedcba9876543210", now=T0) is None
        revoked = await store.revoke("0123456789abcdef", now=T0 + 1)
        assert revoked is not None and revoked.revoked_at == T0 + 1
        again = await store.revoke("0123456789abcdef", now=T0 + 2)
        assert again is not None and again.revoked_at == T0 + 1
        assert await store.all() == [again]

    asyncio.run(run())


def test_keys_over_dynamodb_store_only_the_digest(moto: MotoServer) -> None:
    ddb = client(moto.endpoint, "dynamodb")
    table = fresh_table(ddb, "tenant-keys")
    keys = TenantKeys(DynamoTenantKeys(ddb, table))
    key, record = asyncio.run(keys.create(tenant="acme", who="ops", now=T0))
    assert asyncio.run(keys.verify(key)) == "acme"
    (item,) = ddb.scan(TableName=table)["Items"]
    assert item["pk"] == {"S": f"key#{record.key_id}"}
    assert key.split("_")[2] not in repr(item)
    asyncio.run(keys.revoke(record.key_id, now=T0 + 1))
    assert asyncio.run(keys.verify(key)) is None
