"""New connections closed before their first transaction: one each, as a dying proxy
leaves its unused connections, is reconnected without a deferral; a server that closes
every new connection backs its (source, site) off after each worker's second, and only the
jobs those connections were opened for have an attempt counted."""

from __future__ import annotations

from test_ready_queue_reload import FakeMx, answered, make_queue, submit

from quiver.scheduler.budget import Budgets


async def test_unused_connections_closed_once_each_are_reconnected_not_deferred() -> None:
    mx = FakeMx(closed_unused=4)
    queue = make_queue(mx, Budgets(), 4)
    jobs = submit(queue, 40)
    assert await answered(jobs) == [250] * 40
    assert mx.delivered == 40
    assert not queue.backing_off()


async def test_a_server_closing_every_new_connection_is_backed_off_not_stormed() -> None:
    mx = FakeMx(closed_unused=1_000)
    queue = make_queue(mx, Budgets(), 4)
    jobs = submit(queue, 40)
    assert set(await answered(jobs)) <= {421, 451}  # deferred: the close, or the backoff
    attempts = [a for j in jobs for a in j.future.result()]
    # The job a worker's twice-closed connections were for was tried; the rest, drained
    # by the backoff, were not. At most one per worker (4), at least the first.
    assert 1 <= sum(a.counts for a in attempts) <= 4
    assert all("closed before the first MAIL" in a.reply.text for a in attempts)
    assert queue.backing_off()
    assert mx.opened <= 2 * 4  # at most two connections per worker before the backoff
