"""Cluster share: each sender task enforces 1/N of every throttle, N = live tasks.

Tasks heartbeat into a DynamoDB table (one item per task, refreshed every
`interval`, considered dead after `stale`). Error bound, stated in the README:
in steady state the cluster-wide rate equals the limit and connections are at
most the limit (each task is still allowed one connection per budget when the
limit is below N). When a task joins, the others learn of it within one
interval, so for at most `interval` seconds the cluster can exceed a limit by
one task's share (limit/N). A task counts the live tasks once before its intake
starts (`join`), so it never sends at a whole limit while it is one of N.
When a task dies, its share goes unused for at most `stale` seconds: the limit
is under-used, never exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from quiver.storage.aws import aws_executor

log = logging.getLogger("quiver.sender")

PARTITION = "senders"


class Membership:
    """A fixed share (a single task, or tests)."""

    def __init__(self, tasks: int = 1) -> None:
        self.tasks = max(1, tasks)

    def share(self) -> float:
        return 1.0 / self.tasks

    async def join(self) -> None:
        """Learn this task's share before it sends anything."""

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class DynamoMembership(Membership):
    def __init__(
        self, *, client: Any, table: str, task_id: str, interval: float = 10.0,
        stale: float = 30.0,
    ) -> None:
        super().__init__(1)
        self._client = client
        self._table = table
        self.task_id = task_id
        self.interval = interval
        self.stale = stale

    def beat(self) -> int:
        """Write this task's heartbeat and count the live tasks (synchronous)."""
        now = time.time()
        self._client.put_item(TableName=self._table, Item={
            "pk": {"S": PARTITION}, "sk": {"S": self.task_id},
            "heartbeat": {"N": f"{now:.3f}"},
            # DynamoDB TTL removes items of tasks that died long ago.
            "expires_at": {"N": str(int(now + 3600))},
        })
        response = self._client.query(
            TableName=self._table,
            KeyConditionExpression="pk = :p",
            FilterExpression="heartbeat > :h",
            ExpressionAttributeValues={":p": {"S": PARTITION}, ":h": {"N": f"{now - self.stale}"}},
            Select="COUNT",
        )
        return max(1, int(response.get("Count", 1)))

    def leave(self) -> None:
        self._client.delete_item(TableName=self._table, Key={
            "pk": {"S": PARTITION}, "sk": {"S": self.task_id}})

    async def join(self) -> None:
        # Without this a new task would enforce whole limits (1/1) until its first
        # heartbeat, on top of the shares of the tasks already running. Bounded: an
        # unreachable table must not hold a starting task for the client's retries.
        try:
            await asyncio.wait_for(self._beat(), timeout=self.interval)
        except TimeoutError:
            log.warning("membership: no heartbeat within %g s; starting with a share of 1/%d",
                        self.interval, self.tasks)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tasks = await loop.run_in_executor(aws_executor(), self.beat)
        except Exception as exc:
            # Keep the last known share: a table hiccup must not stop delivery.
            log.warning("membership heartbeat failed: %s", exc)
            return
        if tasks != self.tasks:
            log.info("live sender tasks: %d (this task enforces 1/%d of each limit)",
                     tasks, tasks)
        self.tasks = tasks

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat every `interval` after `join`, then leave the table on stop."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            if not stop.is_set():
                await self._beat()
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(aws_executor(), self.leave)
