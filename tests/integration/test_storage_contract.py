"""One contract, two stores: the in-memory fakes that unit tests use must answer as
the DynamoDB stores do on moto's server, for final-event claims and the
suppression list. Every test runs against both; a fresh table for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from botocore.credentials import Credentials
from moto_tables import fresh_table

from quiver.devstack.moto_server import (
    FAKE_CREDENTIALS,
    REGION,
    MotoServer,
    client,
    create_resources,
    start_moto,
)
from quiver.settings import Deployment
from quiver.storage.base import ALL_TENANTS, FinalsStore, Suppression, SuppressionStore
from quiver.storage.dynamo import DynamoFinals, DynamoSuppression
from quiver.storage.dynamo_lean import LeanDynamoClient
from quiver.storage.memory import MemoryFinals, MemorySuppression

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0
CREDENTIALS = {"access_key": FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
               "secret_key": FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("contract"))
    try:
        yield server, create_resources(server.endpoint)
    finally:
        server.stop()



class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "dynamo"])
def finals(request: pytest.FixtureRequest) -> FinalsStore:
    if request.param == "memory":
        return MemoryFinals()
    server, _ = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    return DynamoFinals(ddb, fresh_table(ddb, "finals"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "dynamo", "dynamo-lean"])
async def suppression(request: pytest.FixtureRequest,
                      clock: Clock) -> AsyncIterator[SuppressionStore]:
    """The fake, the boto3 store, and the store with the sender's lean batch calls."""
    if request.param == "memory":
        yield MemorySuppression(clock=clock)
        return
    server, _ = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    lean = None
    if request.param == "dynamo-lean":
        lean = LeanDynamoClient(endpoint_url=server.endpoint, region=REGION,
                                credentials=Credentials(**CREDENTIALS))
    yield DynamoSuppression(ddb, fresh_table(ddb, "suppression"), clock=clock, lean=lean)
    if lean is not None:
        await lean.close()


def rec(event: str, rcpt: str, mid: str = "m1") -> dict:
    return {"event": event, "id": mid, "rcpt": rcpt, "at": "2026-11-26T10:00:00.000Z"}


async def test_first_batch_wins_and_reruns_keep_their_records(finals: FinalsStore) -> None:
    first = [rec("delivered", "a@x.test"), rec("deferred", "b@x.test"), rec("bounced", "c@x.test")]
    assert finals.claim("batch1", first) == first
    assert finals.claim("batch1", first) == first  # the same batch, re-run: nothing dropped
    again = [rec("delivered", "a@x.test"), rec("deferred", "b@x.test"),
             rec("expired", "b@x.test"), rec("rejected", "", mid="m2")]
    kept = finals.claim("batch2", again)
    # a@ already final in batch1: dropped. Deferred records are never claimed.
    assert kept == again[1:]
    assert await finals.finalized("m1") == {"a@x.test", "c@x.test", "b@x.test"}
    assert await finals.finalized("nope") == set()


def test_duplicates_inside_one_batch_keep_the_first(finals: FinalsStore) -> None:
    records = [rec("delivered", "a@x.test"), rec("delivered", "a@x.test")]
    assert finals.claim("b", records) == records[:1]


def test_many_keys_span_batch_limits(finals: FinalsStore) -> None:
    records = [rec("delivered", f"u{i}@x.test", mid=f"m{i % 7}") for i in range(260)]
    assert len(finals.claim("big", records)) == 260
    assert finals.claim("other", records) == []


async def test_a_confirmed_producer_claims_only_its_risky_ids(finals: FinalsStore) -> None:
    records = [rec("delivered", "a@x.test"), rec("delivered", "b@x.test", mid="m2"),
               rec("delivered", "b@x.test", mid="m2")]
    await finals.confirm("flush1", ["m2"])
    # Every record kept, the duplicate in the batch excepted; only m2 claimed.
    assert finals.claim("batch1", records, producer="flush1") == records[:2]
    assert await finals.finalized("m1") == set()
    assert await finals.finalized("m2") == {"b@x.test"}
    # A later copy of m2's final event, from any batch, is dropped by that claim.
    assert finals.claim("batch2", [rec("bounced", "b@x.test", mid="m2")]) == []


def test_an_unconfirmed_producer_claims_everything(finals: FinalsStore) -> None:
    records = [rec("delivered", "a@x.test")]
    assert finals.claim("batch1", records, producer="never") == records
    assert finals.claim("batch2", records, producer="never") == []


def entry(address: str, tenant: str = ALL_TENANTS, **kw: Any) -> Suppression:
    fields: dict[str, Any] = {"reason": "hard_bounce", "created_at": T0 - 60,
                              "source": "bounced m1: 550 5.1.1 no such user"}
    fields.update(kw)
    return Suppression(address=address, tenant=tenant, **fields)


async def test_lookup_returns_the_suppressed_ones_keyed_as_asked(
        suppression: SuppressionStore) -> None:
    await suppression.put(entry("Ann@Example.com"))
    found = await suppression.lookup(["ann@example.COM", "bob@example.com"], tenant=None)
    assert list(found) == ["ann@example.COM"]
    assert found["ann@example.COM"] == entry("ann@example.com")
    assert await suppression.lookup([], tenant="t1") == {}


async def test_a_tenant_sees_its_own_entries_and_everyone_s_its_own_first(
        suppression: SuppressionStore) -> None:
    await suppression.put(entry("a@x.test", tenant="t1", reason="manual", source="asked"))
    await suppression.put(entry("b@x.test", reason="complaint", source="abuse"))
    await suppression.put(entry("a@x.test", reason="complaint", source="abuse"))
    addresses = ["a@x.test", "b@x.test", "c@x.test"]
    mine = await suppression.lookup(addresses, tenant="t1")
    assert {a: (e.tenant, e.source) for a, e in mine.items()} == {
        "a@x.test": ("t1", "asked"), "b@x.test": (ALL_TENANTS, "abuse")}
    other = await suppression.lookup(addresses, tenant="t2")
    assert {a: e.tenant for a, e in other.items()} == {"a@x.test": "*", "b@x.test": "*"}
    none = await suppression.lookup(addresses, tenant=None)
    assert {a: e.tenant for a, e in none.items()} == {"a@x.test": "*", "b@x.test": "*"}


async def test_a_lapsed_entry_no_longer_suppresses(
        suppression: SuppressionStore, clock: Clock) -> None:
    await suppression.put(entry("soft@x.test", expires_at=int(T0) + 3600))
    assert list(await suppression.lookup(["soft@x.test"], tenant=None)) == ["soft@x.test"]
    clock.now = T0 + 3600
    assert await suppression.lookup(["soft@x.test"], tenant=None) == {}


async def test_put_replaces_and_remove_forgets(suppression: SuppressionStore) -> None:
    await suppression.put(entry("a@x.test", tenant="t1"))
    await suppression.put(entry("a@x.test", tenant="t1", reason="manual", source="by hand"))
    found = await suppression.lookup(["a@x.test"], tenant="t1")
    assert (found["a@x.test"].reason, found["a@x.test"].source) == ("manual", "by hand")
    await suppression.remove("A@x.test")  # the every-tenant entry: there is none
    assert list(await suppression.lookup(["a@x.test"], tenant="t1")) == ["a@x.test"]
    await suppression.remove("A@x.test", tenant="t1")
    assert await suppression.lookup(["a@x.test"], tenant="t1") == {}


async def test_many_addresses_span_batch_limits(suppression: SuppressionStore) -> None:
    suppressed = [f"u{i}@x.test" for i in range(0, 130, 3)]
    for address in suppressed:
        await suppression.put(entry(address, tenant="t1"))
    asked = [f"u{i}@x.test" for i in range(130)] + ["u0@x.test", "U3@X.TEST"]
    found = await suppression.lookup(asked, tenant="t1")
    assert sorted(found) == sorted([*suppressed, "U3@X.TEST"])


async def test_put_many_batches_and_the_last_of_one_key_wins(
        suppression: SuppressionStore) -> None:
    many = [entry(f"u{i}@x.test", tenant="t1") for i in range(60)]
    many.append(entry("U0@x.test", tenant="t1", reason="manual", source="again"))
    await suppression.put_many(many)
    found = await suppression.lookup([f"u{i}@x.test" for i in range(60)], tenant="t1")
    assert len(found) == 60 and found["u0@x.test"].source == "again"
    await suppression.put_many([])


async def test_pages_list_a_scope_or_every_one_lapsed_ones_too(
        suppression: SuppressionStore) -> None:
    await suppression.put_many([entry(f"a{i}@x.test", tenant="t1") for i in range(5)]
                               + [entry("g@x.test", source="",
                                        expires_at=int(T0) - 1)])
    t1 = [e async for page in suppression.pages(tenant="t1") for e in page]
    assert sorted(e.address for e in t1) == [f"a{i}@x.test" for i in range(5)]
    every = [e async for page in suppression.pages(tenant=None) for e in page]
    assert len(every) == 6
    (g,) = [e async for page in suppression.pages(tenant=ALL_TENANTS) for e in page]
    assert g == entry("g@x.test", source="", expires_at=int(T0) - 1)


async def test_dynamo_items_follow_the_table_layout(
        moto: tuple[MotoServer, Deployment]) -> None:
    """The layout cdk/tables.py documents, on the stack's own suppression table."""
    server, deployment = moto
    ddb = client(server.endpoint, "dynamodb")
    store = DynamoSuppression(ddb, deployment.suppression_table, clock=Clock())
    await store.put(entry("Layout@X.test", expires_at=int(T0) + 60))
    item = ddb.get_item(TableName=deployment.suppression_table, Key={
        "pk": {"S": "tenant:*"}, "sk": {"S": "address:layout@x.test"}})["Item"]
    assert item["reason"] == {"S": "hard_bounce"}
    assert item["source"] == {"S": "bounced m1: 550 5.1.1 no such user"}
    assert float(item["created_at"]["N"]) == T0 - 60
    assert item["expires_at"] == {"N": str(int(T0) + 60)}
    await store.remove("layout@x.test")
    assert "Item" not in ddb.get_item(TableName=deployment.suppression_table, Key={
        "pk": {"S": "tenant:*"}, "sk": {"S": "address:layout@x.test"}})


async def test_add_writes_once_per_reason_and_says_whether_it_did(
        suppression: SuppressionStore) -> None:
    unsub = entry("Ann@x.test", tenant="t1", reason="unsubscribe", source="one-click, m1")
    assert await suppression.add(unsub)
    assert not await suppression.add(unsub)
    assert not await suppression.add(entry("ann@X.test", tenant="t1", reason="unsubscribe",
                                           source="one-click, m2"))
    found = await suppression.lookup(["ann@x.test"], tenant="t1")
    assert (found["ann@x.test"].reason, found["ann@x.test"].source) == (
        "unsubscribe", "one-click, m1")
    # Another tenant's entry is another entry; another reason's is replaced.
    assert await suppression.add(entry("ann@x.test", tenant="t2", reason="unsubscribe",
                                       source="one-click, m1"))
    await suppression.put(entry("bob@x.test", tenant="t1", reason="manual", source="import"))
    assert await suppression.add(entry("bob@x.test", tenant="t1", reason="unsubscribe",
                                       source="one-click, m3"))
    found = await suppression.lookup(["bob@x.test"], tenant="t1")
    assert found["bob@x.test"].reason == "unsubscribe"


async def test_add_rewrite_own_lets_the_writer_of_an_entry_finish_and_no_one_else(
        suppression: SuppressionStore) -> None:
    """An inbound object processed again finds the entry it wrote: it writes it again
    (True, so it sends its event again under the same batch id); an entry that
    another request wrote still stops it."""
    mine = entry("Cy@x.test", tenant="t1", reason="unsubscribe",
                 source="mailto (RFC 2369), message m1, s3://inbound/bounce/a")
    assert await suppression.add(mine, rewrite_own=True)
    assert await suppression.add(mine, rewrite_own=True)
    assert not await suppression.add(mine)
    theirs = entry("cy@x.test", tenant="t1", reason="unsubscribe",
                   source="mailto (RFC 2369), message m1, s3://inbound/bounce/b")
    assert not await suppression.add(theirs, rewrite_own=True)
    found = await suppression.lookup(["cy@x.test"], tenant="t1")
    assert found["cy@x.test"].source == mine.source
    with pytest.raises(ValueError, match="source"):
        await suppression.add(entry("dee@x.test", reason="unsubscribe", source=""),
                              rewrite_own=True)
