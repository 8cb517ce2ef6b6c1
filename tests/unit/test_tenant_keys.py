"""Tenants' API keys over the in-memory store: a key verifies as its tenant until
revoked; only its HMAC is stored; anything else verifies as nobody."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.storage.memory import MemoryTenantKeys
from quiver.tenants.keys import TenantKeyError, TenantKeys, digest_of, key_id_of

T0 = 1_790_000_000.0


def test_a_key_verifies_as_its_tenant_until_revoked() -> None:
    async def run() -> None:
        store = MemoryTenantKeys()
        keys = TenantKeys(store)
        key, record = await keys.create(tenant="acme", who="ops", now=T0)
        other, _ = await keys.create(tenant="shop", who="ops", now=T0 + 1)
        assert key.startswith("qk_") and len(key) == 84
        assert key_id_of(key) == record.key_id
        assert key.split("_")[2] not in repr(store.records)
        assert record.digest == digest_of(record.key_id, key.split("_")[2])
        assert await keys.verify(key) == "acme"
        assert await keys.verify(other) == "shop"
        revoked = await keys.revoke(record.key_id, now=T0 + 5)
        assert revoked.revoked_at == T0 + 5
        assert (await keys.revoke(record.key_id, now=T0 + 9)).revoked_at == T0 + 5
        assert await keys.verify(key) is None
        assert await keys.verify(other) == "shop"
        listed = await keys.list()
        assert [(r.tenant, r.active) for r in listed] == [("acme", False), ("shop", True)]
        assert [r.tenant for r in await keys.list(tenant="shop")] == ["shop"]

    asyncio.run(run())


def test_a_changed_secret_or_a_swapped_id_does_not_verify() -> None:
    async def run() -> None:
        keys = TenantKeys(MemoryTenantKeys())
        key, record = await keys.create(tenant="acme", who="ops", now=T0)
        other, _ = await keys.create(tenant="shop", who="ops", now=T0)
        flipped = key[:-1] + ("0" if key[-1] != "0" else "1")
        assert await keys.verify(flipped) is None
        # shop's secret under acme's id: the digest is keyed with the id
        assert await keys.verify(f"qk_{record.key_id}_{other.split('_')[2]}") is None
        assert await keys.verify(f"qk_{'0' * 16}_{key.split('_')[2]}") is None

    asyncio.run(run())


def test_revoking_an_unknown_or_malformed_id_says_so() -> None:
    keys = TenantKeys(MemoryTenantKeys())
    with pytest.raises(TenantKeyError, match="no key 0123456789abcdef"):
        asyncio.run(keys.revoke("0123456789abcdef", now=T0))
    with pytest.raises(TenantKeyError, match="is not a key id"):
        asyncio.run(keys.revoke("nope", now=T0))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=100))
def test_any_text_verifies_as_nobody(text: str) -> None:
    keys = TenantKeys(MemoryTenantKeys())
    asyncio.run(keys.create(tenant="acme", who="ops", now=T0))
    assert asyncio.run(keys.verify(text)) is None
    assert key_id_of(text) is None or len(text) == 84
