"""Warm-up counts on moto's server over HTTP: the DynamoDB store answers as the
in-memory one does, and senders reserving blocks of one cap at the same time are given
exactly the cap between them, never more."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from moto_tables import fresh_table

from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.storage.dynamo_warmup import DynamoWarmup
from quiver.storage.warmup import (
    CapUse,
    DayCounts,
    DayState,
    MemoryWarmup,
    Plan,
    WarmupStore,
)

pytestmark = pytest.mark.integration

DATE = "2026-12-05"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("warmup"))
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> WarmupStore:
    if request.param == "memory":
        return MemoryWarmup()
    ddb = client(request.getfixturevalue("moto").endpoint, "dynamodb")
    return DynamoWarmup(ddb, fresh_table(ddb))


async def test_reserve_takes_what_is_left_and_never_more(store: WarmupStore) -> None:
    take = dict(source="ip1", provider="gmail", date=DATE, plan=Plan(10, 1, "standard"))
    assert await store.reserve(**take, want=4) == 4  # type: ignore[arg-type]
    assert await store.reserve(**take, want=4) == 4  # type: ignore[arg-type]
    assert await store.reserve(**take, want=4) == 2  # type: ignore[arg-type]
    assert await store.reserve(**take, want=1) == 0  # type: ignore[arg-type]
    await store.release(source="ip1", provider="gmail", date=DATE, count=3)
    assert await store.reserve(**take, want=5) == 3  # type: ignore[arg-type]
    assert await store.reserve(source="ip1", provider="-", date=DATE, want=2,
                               plan=Plan(5, 1, "standard")) == 2
    assert await store.reserve(source="ip1", provider="gmail", date="2026-12-06", want=2,
                               plan=Plan(5, 2, "standard")) == 2
    assert await store.reserve(source="ip10", provider="gmail", date=DATE, want=1,
                               plan=Plan(5, 1, "standard")) == 1
    assert await store.used(source="ip1", date=DATE) == {"gmail": 10, "-": 2}
    await store.put_state(source="ip1", state=DayState(day=1, as_of=DATE, why="held"),
                          expected=None)
    uses, states = await store.today(date=DATE)
    assert sorted(uses, key=lambda u: (u.source, u.provider)) == [
        CapUse("ip1", "-", DATE, taken=2, cap=5, day=1, template="standard"),
        CapUse("ip1", "gmail", DATE, taken=10, cap=10, day=1, template="standard"),
        CapUse("ip10", "gmail", DATE, taken=1, cap=5, day=1, template="standard")]
    assert states == {"ip1": DayState(day=1, as_of=DATE, why="held")}


async def test_outcomes_add_up(store: WarmupStore) -> None:
    assert await store.outcomes(source="ip1", date=DATE) == DayCounts()
    await store.add_outcomes(source="ip1", date=DATE, counts=DayCounts(10, 1, 2))
    await store.add_outcomes(source="ip1", date=DATE, counts=DayCounts(5, 0, 1))
    assert await store.outcomes(source="ip1", date=DATE) == DayCounts(15, 1, 3)
    assert await store.outcomes(source="ip2", date=DATE) == DayCounts()


async def test_state_moves_only_from_the_expected_one(store: WarmupStore) -> None:
    assert await store.state(source="ip1") is None
    first = DayState(day=2, as_of=DATE)
    assert await store.put_state(source="ip1", state=first, expected=None)
    assert not await store.put_state(source="ip1", state=first, expected=None)
    held = DayState(day=2, as_of="2026-12-06", why="bounce rate 9.0% (9 of 100) over 5.0%")
    assert not await store.put_state(source="ip1", state=held,
                                     expected=DayState(day=1, as_of=DATE))
    assert await store.put_state(source="ip1", state=held, expected=first)
    assert await store.state(source="ip1") == held


async def test_concurrent_reservations_are_given_exactly_the_cap(moto: MotoServer) -> None:
    ddb = client(moto.endpoint, "dynamodb")
    table = fresh_table(ddb)
    # Eight senders, each with its own client, taking blocks of 3 of a cap of 50 until
    # none is left (bounded: each call grants at least 1 or ends its sender).
    stores = [DynamoWarmup(client(moto.endpoint, "dynamodb"), table) for _ in range(8)]

    async def sender(store: DynamoWarmup) -> int:
        got = 0
        for _ in range(50):
            granted = await store.reserve(source="ip1", provider="gmail", date=DATE,
                                          want=3,
                               plan=Plan(50, 1, "standard"))
            if granted == 0:
                return got
            got += granted
        return got

    totals = await asyncio.gather(*(sender(s) for s in stores))
    assert sum(totals) == 50
    assert await stores[0].used(source="ip1", date=DATE) == {"gmail": 50}
