"""Cluster membership against moto's DynamoDB server: a task knows its share before
it sends (join), others learn of it at their next heartbeat, a stopped task leaves,
and a table that never answers does not hold a starting task."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from quiver.localstack.moto_server import MotoServer, client, create_resources, session, start_moto
from quiver.scheduler.membership import DynamoMembership


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


def test_join_counts_the_tasks_already_live_and_others_learn_at_their_next_beat(
        moto: tuple[MotoServer, str]) -> None:
    server, table = moto
    ddb = client(server.endpoint, "dynamodb")

    async def scenario() -> None:
        a, b = member(ddb, table, "task-a"), member(ddb, table, "task-b")
        await a.join()
        assert a.share() == 1.0
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        run_a = asyncio.create_task(a.run(stop_a))
        await b.join()
        assert b.share() == 0.5  # before b's first send, not after its first interval
        run_b = asyncio.create_task(b.run(stop_b))
        await asyncio.sleep(0.7)
        assert a.share() == 0.5
        stop_b.set()
        await run_b  # leaves the table
        await asyncio.sleep(0.7)
        assert a.share() == 1.0
        stop_a.set()
        await run_a

    asyncio.run(scenario())
    items = ddb.scan(TableName=table)["Items"]
    assert not [i for i in items if i["sk"]["S"] in ("task-a", "task-b")]


def test_a_table_that_never_answers_does_not_hold_the_start(tmp_path: Path) -> None:
    # A listening socket that never accepts: connects succeed, no reply ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        ddb = session(endpoint).client(
            "dynamodb", endpoint_url=endpoint,
            config=Config(read_timeout=30, retries={"max_attempts": 1}))
        mine = DynamoMembership(client=ddb, table="senders", task_id="t", interval=0.5)

        async def scenario() -> float:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mine.join()
            return loop.time() - started

        took = asyncio.run(scenario())
    assert took < 5  # bounded by the heartbeat interval, not the client's 30 s timeout
    assert mine.share() == 1.0  # the last known share: delivery goes on
