"""One connection's life, from opening to closing: the per-connection dispatcher.

The ready queue (ready.py) holds the jobs, the limits and the backoff of one
(source, site) and decides how many connections it wants; a `Connection` owns one of
them: its place in the source's and the site's budgets, the session (which holds
the job pipelined behind the last body), its counters, and the loop that serves jobs
until the queue has none left for it (KumoMTA's `Dispatcher` beside its ready queue).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from quiver.delivery import Attempt, Path
from quiver.scheduler.budget import ConnectionBudget
from quiver.smtp.session import SessionError, SmtpSession

if TYPE_CHECKING:
    from quiver.scheduler.ready import Job, ReadyQueue


class Connection:
    """A place in its source's budget and in its site's (moved, not re-acquired, when
    a reload rebinds the queue to other budgets), and the connections opened in it
    one after another while jobs wait."""

    __slots__ = ("budget", "closed_streak", "queue", "retiring", "site")

    def __init__(self, queue: ReadyQueue, budget: ConnectionBudget,
                 site: ConnectionBudget) -> None:
        self.queue = queue
        self.budget = budget
        self.site = site
        # Counted as closing in both budgets (one too many after a reload).
        self.retiring = False
        # New connections in a row closed before their first transaction. Per
        # connection place: when a proxy dies, every connection it carried that had
        # not been used yet is found closed once, and that is not the server refusing
        # mail; the same place's reconnect meeting it again is.
        self.closed_streak = 0

    async def run(self) -> None:
        """Open, serve, close; again while the queue still wants this connection."""
        queue = self.queue
        try:
            served = False
            while queue.wants(self, served=served):
                try:
                    session, here = await queue.open_session()
                except SessionError as exc:
                    await queue.open_failed(exc, self)
                    return
                try:
                    await self._serve(session, here)
                finally:
                    served = True
                    await session.close()
        finally:
            task = asyncio.current_task()
            queue.closed(self, cancelled=task is not None and task.cancelling() > 0)

    async def _serve(self, session: SmtpSession[Job], here: Path) -> None:
        queue = self.queue
        sent = 0
        # The session holds the job whose MAIL, RCPT and DATA went out behind the last
        # body (its rate token already taken): it is this connection's next transaction,
        # whatever else is queued, because the server holds its envelope. A held job is
        # served even if a reload lowered max_messages_per_connection.
        while sent < queue.per_connection or session.pipelined is not None:
            held = session.pipelined
            job = held if held is not None else await queue.next_job(self)
            if job is None:
                return
            queue.idle -= 1
            try:
                if held is not None and job.future.done():
                    # Cancelled (a stopping sender) with its envelope at the server: no
                    # body follows; closing the connection leaves nothing delivered.
                    return
                # No RSET between messages: a transaction that got its DATA reply (or
                # was reset after every RCPT failed) leaves the session clean.
                if held is None:
                    await queue.rate_token()
                body = await queue.body(job, session, here)
                if body is None:
                    if held is not None:
                        return  # its envelope is at the server: close, nothing delivered
                    continue
                then = queue.take_next(session, sent, self)
                # The next MAIL goes out now: BODY=8BITMIME only if it will be sent as it
                # is, which is decided by this same server's offer.
                then_eight_bit = (then is not None and then.seven_bit is not None
                                  and session.eight_bit_mime)
                try:
                    if held is not None:
                        result = await session.send_pipelined(
                            message=body[0], eight_bit=body[1], then=then,
                            then_eight_bit=then_eight_bit)
                    else:
                        result = await session.send(
                            sender=job.sender, recipients=job.recipients, message=body[0],
                            eight_bit=body[1], then=then, then_eight_bit=then_eight_bit)
                except SessionError as exc:
                    if then is not None:
                        queue.jobs.appendleft(then)  # not sent (or lost unanswered): queued again
                    self._lost(exc, job, here)
                    return
                finally:
                    queue.check_pipelining(session)
                sent += 1
                self.closed_streak = 0
                closing = queue.settle(job, result, here)
                if closing is not None:
                    if then is not None:
                        queue.jobs.appendleft(then)  # drained below, unattempted
                    queue.closed_by_server(closing, here)
                    return
            finally:
                queue.idle += 1

    def _lost(self, exc: SessionError, job: Job, here: Path) -> None:
        """The connection failed under `job`'s send."""
        queue = self.queue
        if exc.stage == "reused":
            # The server closed the idle connection: reconnect and resend; nothing was
            # attempted, and no backoff for a routine close.
            queue.jobs.appendleft(job)
        elif exc.stage == "closed":
            # Closed before its first transaction: not this job's failure. Reconnect
            # once (a proxy that died is found and routed around then); twice in a row
            # is the server's doing: back off rather than reconnect again and again.
            queue.jobs.appendleft(job)
            self.closed_streak += 1
            if self.closed_streak > 1:
                self.closed_streak = 0
                queue.closed_by_server(exc.reply, here, tried=job)
        else:
            # Lost inside this job's transaction: the attempt counts for it. What an
            # earlier transaction of it settled (before a 452 split) stands.
            queue.finish(job, job.done + [Attempt(r, exc.reply, here) for r in job.recipients])
