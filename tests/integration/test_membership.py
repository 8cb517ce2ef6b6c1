"""Cluster membership against moto's DynamoDB server: a task knows its share before
it sends (join), others learn of it at their next heartbeat, a stopped task leaves,
and a table that never answers does not hold a starting task, nor a stop."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.config import Config

from quiver.devstack.moto_server import MotoServer, client, create_resources, session, start_moto
from quiver.storage.dynamo import DynamoMembership

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, str]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("membership"))
    try:
        deployment = create_resources(server.endpoint)
        assert deployment.senders_table
        yield server, deployment.senders_table
    finally:
        server.stop()


def member(ddb: Any, table: str, task: str) -> DynamoMembership:
    return DynamoMembership(client=ddb, table=table, task_id=task, interval=0.3, stale=0.9)


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def test_join_counts_the_tasks_already_live_and_others_learn_at_their_next_beat(
        moto: tuple[MotoServer, str]) -> None:
    server, table = moto
    ddb = client(server.endpoint, "dynamodb")

    async def scenario() -> None:
        a, b = member(ddb, table, "task-a"), member(ddb, table, "task-b")
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        await a.join(stop_a)
        assert a.share() == 1.0
        run_a = asyncio.create_task(a.run(stop_a))
        await b.join(stop_b)
        assert b.share() == 0.5  # before b's first send, not after its first interval
        run_b = asyncio.create_task(b.run(stop_b))
        await until(lambda: a.share() == 0.5)
        # Both read the same ids: one order, a rank each (where connection slots go).
        assert {a.position(), b.position()} == {(0, 2), (1, 2)}
        stop_b.set()
        await run_b  # leaves the table
        await until(lambda: a.share() == 1.0)
        stop_a.set()
        await run_a

    asyncio.run(scenario())
    items = ddb.scan(TableName=table)["Items"]
    assert not [i for i in items if i["sk"]["S"] in ("task-a", "task-b")]


def silent_table(listener: socket.socket) -> DynamoMembership:
    """Membership against a listening socket that never accepts: connects succeed,
    no reply ever comes."""
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    ddb = session(endpoint).client("dynamodb", endpoint_url=endpoint,
                                   config=Config(read_timeout=30, retries={"max_attempts": 1}))
    return DynamoMembership(client=ddb, table="senders", task_id="t", interval=0.5)


def test_a_table_that_never_answers_does_not_hold_the_start(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listener:
        mine = silent_table(listener)

        async def scenario() -> float:
            started = time.monotonic()
            await mine.join(asyncio.Event())
            return time.monotonic() - started

        with caplog.at_level(logging.WARNING, logger="quiver.sender"):
            took = asyncio.run(scenario())
    print(f"join against a silent table returned after {took:.2f} s (interval 0.5 s)")
    assert took < 5  # bounded by the heartbeat interval, not the client's 30 s timeout
    assert "no heartbeat answer within 0.5 s; a share of 1/1 until one comes" in caplog.text


def test_a_stop_during_join_is_not_held_for_the_interval() -> None:
    with socket.socket() as listener:
        mine = silent_table(listener)
        mine.interval = 30.0

        async def scenario() -> float:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.2, stop.set)
            started = time.monotonic()
            await mine.join(stop)
            return time.monotonic() - started

        took = asyncio.run(scenario())
    print(f"join returned {took:.2f} s after it started, on a stop at 0.2 s (interval 30 s)")
    assert took < 5  # the stop, not the 30 s interval
