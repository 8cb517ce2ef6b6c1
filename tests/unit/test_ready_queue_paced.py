"""A rate-limit 421 that the adaptive engine paces (a reduce rule cuts the source's
rate there) closes the connection without backing the (source, site) off: the jobs
queued behind it wait for the next connection, unattempted and not deferred. Any
other 421 backs off and defers them, as before."""

from __future__ import annotations

import asyncio

from test_ready_queue_reload import DESTINATION, POLICY, ROUTE, SOURCE, FakeMx, _Connector, limits

from quiver.delivery import Path
from quiver.scheduler.budget import Budgets
from quiver.scheduler.ready import Job, ReadyQueue
from quiver.smtp.reply import Reply

RATE_LIMITED = Reply(421, "4.7.28", "Our system has detected an unusual rate of mail")
OTHER = Reply(421, "4.3.2", "System not accepting network messages")


def _queue(paced: bool) -> ReadyQueue:
    return ReadyQueue(source=SOURCE, route=ROUTE, limits=limits(1), budgets=Budgets(),
                      connector=_Connector(FakeMx()), policy=POLICY,  # type: ignore[arg-type]
                      destination=DESTINATION,
                      paced=lambda reply: paced and reply.enhanced == "4.7.28")


def _queued(queue: ReadyQueue, count: int) -> list[Job]:
    # Queued directly, with no worker started: what stands behind a closed connection.
    loop = asyncio.get_running_loop()
    jobs = [Job(sender="s@x.test", recipients=[f"r{i}@d.test"], message=b"m",
                future=loop.create_future()) for i in range(count)]
    queue.jobs.extend(jobs)
    return jobs


async def test_a_paced_rate_limit_reply_neither_backs_off_nor_defers() -> None:
    queue = _queue(paced=True)
    jobs = _queued(queue, 3)
    queue.closed_by_server(RATE_LIMITED, Path(source=SOURCE.name))
    assert not queue.backing_off()
    assert list(queue.jobs) == jobs and not any(j.future.done() for j in jobs)


async def test_an_unpaced_421_backs_off_and_defers_the_queue_unattempted() -> None:
    for paced, reply in ((False, RATE_LIMITED), (True, OTHER)):
        queue = _queue(paced=paced)
        jobs = _queued(queue, 3)
        queue.closed_by_server(reply, Path(source=SOURCE.name))
        assert queue.backing_off()
        attempts = [a for j in jobs for a in j.future.result()]
        assert [a.reply.code for a in attempts] == [421] * 3
        assert not any(a.counts for a in attempts)


async def test_a_paced_reply_on_a_connection_closed_before_its_transaction_backs_off() -> None:
    # `tried` set: closed before a first transaction, twice: not a rate-limit answer.
    queue = _queue(paced=True)
    jobs = _queued(queue, 2)
    queue.closed_by_server(RATE_LIMITED, Path(source=SOURCE.name), tried=jobs[0])
    assert queue.backing_off()
