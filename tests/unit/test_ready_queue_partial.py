"""A job split by a 452 ("too many recipients") keeps what its first transaction
settled: when the connection is lost inside the transaction that carries the rest,
every recipient still ends with an outcome, the accepted ones with their own reply."""

from __future__ import annotations

import asyncio

from test_ready_queue_reload import SOURCE, FakeMx, make_queue

from quiver.delivery import Path
from quiver.policy import Source
from quiver.routing.mx import Route
from quiver.scheduler.budget import Budgets
from quiver.scheduler.ready import Job
from quiver.smtp.reply import Reply
from quiver.smtp.session import SessionError, TransactionResult

DONE_WITHIN = 60.0  # a bound on a stuck queue, not a speed


class _SplitThenLost:
    """Takes the first recipient and answers 452 to the rest; the connection is then
    lost inside the next transaction."""

    pipelining = False  # so the queue never hands it a job to pipeline: none is held
    is_open = True
    pipeline_next_failed = None
    eight_bit_mime = False
    pipelined = None

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, *, sender: str, recipients: list[str], message: bytes,
                   eight_bit: bool = False, then: object = None,
                   then_eight_bit: bool = False) -> TransactionResult:
        self.sends += 1
        if self.sends == 1:
            first, *rest = recipients
            replies = {first: Reply(250, "2.0.0", "ok")}
            replies.update({r: Reply(452, "4.5.3", "too many recipients") for r in rest})
            return TransactionResult(replies)
        raise SessionError("transaction", Reply(451, "4.4.2", "connection lost: reset"))

    async def close(self) -> None:
        return None


class _OneSessionMx(FakeMx):
    def __init__(self) -> None:
        super().__init__()
        self.session = _SplitThenLost()

    async def open_session(self, source: Source, route: Route,  # type: ignore[override]
                           tls_mode: str = "opportunistic") -> tuple[_SplitThenLost, Path]:
        return self.session, Path(source=source.name)


async def test_a_connection_lost_after_a_452_split_leaves_no_recipient_without_an_outcome(
) -> None:
    mx = _OneSessionMx()
    queue = make_queue(mx, Budgets(), 1)
    recipients = ["a@d.test", "b@d.test", "c@d.test"]
    job = Job(sender="s@x.test", recipients=list(recipients), message=b"m",
              future=asyncio.get_running_loop().create_future())
    queue.submit(job)
    attempts = await asyncio.wait_for(job.future, DONE_WITHIN)
    assert sorted(a.rcpt for a in attempts) == recipients
    by_rcpt = {a.rcpt: a for a in attempts}
    assert by_rcpt["a@d.test"].reply.code == 250
    assert [by_rcpt[r].reply.code for r in ("b@d.test", "c@d.test")] == [451, 451]
    assert all(by_rcpt[r].counts for r in recipients)
    assert mx.session.sends == 2
    assert SOURCE.name == attempts[0].path.source
    await queue.close()
