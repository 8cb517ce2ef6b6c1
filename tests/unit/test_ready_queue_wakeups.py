"""A queued job wakes one idle connection, not every one: the others stay asleep (each
woken connection scans the queue, finds it empty and waits again, which cost about ten
wake-ups per message sent with a dozen connections idle). And a woken connection that
leaves without the job (one too many for its limit) wakes another, so the job is not
left for an idle timeout."""

from __future__ import annotations

import asyncio

import pytest
from test_ready_queue_reload import FakeMx, answered, make_queue, submit, until

from quiver.scheduler import ready
from quiver.scheduler.budget import Budgets
from quiver.scheduler.ready import ReadyQueue


def count_scans(queue: ReadyQueue) -> list[int]:
    """Counts the limit checks a connection makes each time it looks for a job."""
    scans = [0]
    check = queue.over_limit

    def counted(conn: object) -> bool:
        scans[0] += 1
        return check(conn)  # type: ignore[arg-type]

    queue.over_limit = counted  # type: ignore[method-assign]
    return scans


async def test_a_job_wakes_one_idle_connection_not_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ready, "IDLE_TIMEOUT", 3600.0)
    mx = FakeMx()
    queue = make_queue(mx, Budgets(), 8)
    assert await answered(submit(queue, 8)) == [250] * 8
    await until(lambda: queue.waiting_connections == 8)
    assert mx.open == 8
    scans = count_scans(queue)
    for _ in range(5):
        assert await answered(submit(queue, 1)) == [250]
        await until(lambda: queue.waiting_connections == 8)
    # Per job: the woken connection looks once when woken and once after sending.
    # Waking all eight made each of them look: at least 8 per job.
    assert scans[0] <= 5 * 2
    assert mx.delivered == 13 and mx.opened == 8


async def test_a_woken_connection_over_its_limit_hands_the_job_to_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A job is never left for an idle timeout: here that would be an hour.
    monkeypatch.setattr(ready, "IDLE_TIMEOUT", 3600.0)
    mx = FakeMx()
    seat = [(0, 1)]
    queue = make_queue(mx, Budgets(), 2, seat=seat)
    assert await answered(submit(queue, 2)) == [250] * 2
    await until(lambda: queue.waiting_connections == 2)
    # A second task joined: this one holds one of the two connections now. The
    # connection the next job wakes finds itself one too many and closes.
    seat[0] = (0, 2)
    assert await answered(submit(queue, 1)) == [250]
    await until(lambda: mx.open == 1)
    assert mx.opened == 2  # the job went to the connection still open: none was opened


async def test_every_job_is_delivered_when_jobs_arrive_while_connections_wake() -> None:
    mx = FakeMx(pipelining=True)
    queue = make_queue(mx, Budgets(), 6)
    jobs = []
    for burst in (1, 7, 2, 30, 1, 12):
        jobs += submit(queue, burst)
        await asyncio.sleep(0)  # some woken, not yet running, when the next burst comes
    assert await answered(jobs) == [250] * len(jobs)
    assert mx.delivered == len(jobs)
    assert mx.peak_open <= 6
