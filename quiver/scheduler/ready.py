"""One ready queue per (egress source, site): jobs waiting for a connection, their
limits and backoff, and how many connections they want. Each connection's life,
reused across messages, is a `Connection` (connection.py); whose fault a failed one
was is attribution.py's call.

Over PIPELINING, when jobs are waiting, a connection writes the next job's MAIL,
RCPT and DATA behind the current body (one round trip per message); that job
is the connection's next transaction, and its own send reads what the server
said to it (or finds the connection gone and queues it again, unattempted).

A connection failure, a 421, or a server that closes a connection before its
first transaction backs off the whole (source, site) for `backoff` seconds (except
a rate-limit 421 after a transaction that the adaptive engine paces by cutting
the source's rate there: the queued jobs wait for the next connection instead): the
job the failed connection was for (the first queued) has its attempt counted,
the other queued jobs are deferred without one (they were not tried), and new
jobs are deferred at once until the backoff ends, so a dead destination costs
one connect timeout, not one per message. A connection lost inside a
transaction is that transaction's attempt; the next job opens a new connection.

Connections to one site from every source of the task share a second budget,
the site's `max_mx_connections`. A server that refuses a new connection at its
greeting with a 421 saying it has too many connections lowers that budget, for
CROWDED_HOLD, to the connections the task still has there: the queued jobs wait
for those (idle ones close early to make room) instead of being deferred, and
nothing backs off. With no other connection there, the 421 is a connection
failure like any other.

Limits are cluster-wide: this task holds `task_slots` of each connection limit
(budget.py), which is zero on some tasks when the limit is below the task count. A
queue with no slot in its source's budget or its site's opens nothing: its jobs go
back to the scheduler (`Reroute`) for another source of the pool, and are deferred
unattempted if none has a slot here, for a task that holds one to send.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from quiver.delivery import Attempt, Path
from quiver.policy import Source, TlsMode
from quiver.policy.handle import PolicyHandle
from quiver.routing.mx import Route
from quiver.scheduler.attribution import Forbidden, ProxyDown, attribute
from quiver.scheduler.budget import SOLO, Budgets, ConnectionBudget, RateLimiter, task_slots
from quiver.scheduler.connection import Connection
from quiver.scheduler.connector import Connector
from quiver.scheduler.outcomes import OutcomeWindow
from quiver.scheduler.throttle import Destination, Limits, resolve
from quiver.scheduler.tls import tls_mode_for
from quiver.smtp.reply import Reply, local_reply
from quiver.smtp.session import SessionError, SmtpSession, TransactionResult

log = logging.getLogger("quiver.scheduler")

# A connection with nothing to send for this long is closed: receivers drop idle
# clients anyway (RFC 5321 4.5.3.2.7 allows 5 min; big providers use far less).
IDLE_TIMEOUT = 10.0
# Limits used when no throttle rule sets them.
DEFAULT_MAX_CONNECTIONS = 10
DEFAULT_MAX_MESSAGES_PER_CONNECTION = 100
# A 452 "too many recipients" re-sends the rest in a new transaction this often.
MAX_RESUBMITS = 10
# A site without max_mx_connections still has a budget, so that a "too many
# connections" refusal can lower it; until then it never binds.
UNCAPPED = 1_000_000
# How long a site that refused a connection for having too many stays at the
# connections it had then: Exim's and Postfix's limits are static, so a shorter
# hold only means more refused connections.
CROWDED_HOLD = 300.0
# Greeting texts of servers at their connection limit: Exim "Too many concurrent
# SMTP connections", Postfix "Error: too many connections from ...", and others.
TOO_MANY_CONNECTIONS = re.compile(r"too many (?:[\w-]+ ){0,3}connections", re.IGNORECASE)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Reroute(Exception):
    """The job's source cannot be used (its proxy is down): choose another source."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(str(reply))


@dataclass(eq=False)
class Job:
    sender: str
    recipients: list[str]
    message: bytes
    future: asyncio.Future[list[Attempt]]
    done: list[Attempt] = field(default_factory=list)
    resubmits: int = 0
    # Set when `message` has 8-bit data: its 7-bit form, for servers without 8BITMIME.
    seven_bit: Callable[[], Awaitable[bytes]] | None = None
    # The message's pool and the recipients' domain: what operator controls match.
    pool: str = ""
    domain: str = ""


class ReadyQueue:
    def __init__(
        self,
        *,
        source: Source,
        route: Route,
        limits: Limits,
        budgets: Budgets,
        connector: Connector,
        policy: PolicyHandle,
        seat: Callable[[], tuple[int, int]] = lambda: SOLO,
        destination: Destination,
        proxy_check: Callable[[str], Awaitable[bool]] | None = None,
        proxy_down: Callable[[str, str], None] | None = None,
        tls_mode: TlsMode = "opportunistic",
        clock: Callable[[], float] = time.monotonic,
        paced: Callable[[Reply], bool] = lambda reply: False,
    ) -> None:
        self._proxy_check = proxy_check
        # A 421 the adaptive engine answers by cutting this source's rate there.
        self._paced = paced
        # The destination's TLS mode (policy `tls`); a reload may change it.
        self.tls_mode: TlsMode = tls_mode
        self._clock = clock
        # Read at each decision (backoff, pipelining, a rebind's throttles and TLS mode).
        self._policy: PolicyHandle = policy
        # The server mishandled commands behind the end of data: off for this queue,
        # whatever a policy reload says.
        self.pipelining_broken = False
        # What throttle rules are matched against (kept for a policy reload).
        self.destination = destination
        self._proxy_down = proxy_down
        self.source = source
        self.route = route
        self._connector = connector
        # This task's (rank, tasks) in the fleet: its part of each cluster-wide limit.
        self._seat = seat
        self.jobs: deque[Job] = deque()
        self.active = 0
        self.idle = 0
        # None: not backing off (no sentinel time, whatever the clock's origin).
        self.backoff_until: float | None = None
        self.backoff_reply: Reply | None = None
        # Idle connections waiting for a job, the one idle the shortest time last. A
        # queued job wakes one of them, not all: every idle connection woken for each
        # job would scan the queue and wait again, ten wake-ups for each message sent.
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._connections: set[Connection] = set()
        # Recipients' recent outcomes here, for the live status (the scheduler adds).
        self.outcomes = OutcomeWindow(clock=clock)
        self._bind(limits, budgets)
        # Another queue waiting for this site wakes this one's idle connections.
        self._site_budget.nudges.add(self._wake_all)

    @property
    def backoff(self) -> float:
        return self._policy.current.retry.site_backoff

    @property
    def pipeline_next(self) -> bool:
        return self._policy.current.delivery.pipeline_next

    def rebind(self, budgets: Budgets) -> None:
        """The handle's policy changed: this queue's TLS mode and limits under it."""
        policy = self._policy.current
        self.tls_mode = tls_mode_for(policy.tls, self.destination)
        self.apply(resolve(policy.throttles, self.destination), budgets)

    def apply(self, limits: Limits, budgets: Budgets) -> None:
        """Policy reload: rebind to the new limits. This queue's open connections move
        to the new budget if the matching rule changed (so they count there, and the
        limit is not doubled); idle ones re-check their limit, queued jobs get the
        connections a higher one allows."""
        old, old_site = self._budget, self._site_budget
        self._bind(limits, budgets)
        new, new_site = self._budget, self._site_budget
        for conn in self._connections:
            if new is not old:
                old.hand_over(new, retiring=conn.retiring)
                conn.budget = new
            if new_site is not old_site:
                old_site.hand_over(new_site, retiring=conn.retiring)
                conn.site = new_site
        if new is not old:
            old.wake()
        if new_site is not old_site:
            old_site.nudges.discard(self._wake_all)
            new_site.nudges.add(self._wake_all)
            old_site.wake()
        self._wake_all()
        self._maybe_start()

    def _bind(self, limits: Limits, budgets: Budgets) -> None:
        conn = limits.max_connections
        self._conn_limit = (
            conn.value if conn is not None and isinstance(conn.value, int)
            else DEFAULT_MAX_CONNECTIONS
        )
        key = conn.key if conn else (self.source.name, "default", f"site:{self.route.site}")
        self._conn_key = key
        self._budget: ConnectionBudget = budgets.connections(key, self._conn_limit)
        self._per_conn = limits.max_messages_per_connection or DEFAULT_MAX_MESSAGES_PER_CONNECTION
        rate = limits.max_rate
        self.static_rate = (rate.value.per_second
                            if rate is not None and not isinstance(rate.value, int) else None)
        self._rate: RateLimiter | None = None
        if rate is not None and self.static_rate is not None:
            per_second = self.static_rate
            # The adaptive engine's rate for this source and provider, if it cut one.
            adapted = budgets.adapted.get((self.source.name, self.destination.provider or ""))
            if adapted is not None:
                per_second = min(per_second, adapted)
            self._rate = budgets.rate(rate.key, per_second)
        # A rate set by the rule that sets the connection limit goes with that limit's
        # slots: the tasks that hold none of a small limit send none of its rate.
        self._rate_follows_slots = rate is not None and rate.key == key
        cap = limits.max_mx_connections
        if cap is not None and isinstance(cap.value, int):
            self._site_limit = cap.value
            site_key = cap.key
        else:
            self._site_limit, site_key = UNCAPPED, ("*", "uncapped", f"site:{self.route.site}")
        self._site_key = site_key
        self._site_budget: ConnectionBudget = budgets.connections(site_key, self._site_limit)

    @property
    def budget(self) -> ConnectionBudget:
        return self._budget

    @property
    def site_budget(self) -> ConnectionBudget:
        return self._site_budget

    def held_by(self) -> str | None:
        """Which limit keeps queued jobs waiting now, if one does: "rate" (the send
        rate's next token is not due), "connections" (the source's budget is full) or
        "site connections" (the site's cap, or its crowded hold). Read-only: takes no
        place and no token."""
        if not self.jobs:
            return None
        if self._rate is not None and not self._rate.due():
            return "rate"
        if len(self.jobs) > self.idle:
            if not self._budget.has_room(self._effective_limit()):
                return "connections"
            if not self._site_budget.has_room(self._site_limit_now()):
                return "site connections"
        return None

    def backing_off(self) -> bool:
        return self.backoff_until is not None and self._clock() < self.backoff_until

    def submit(self, job: Job) -> None:
        if self.backing_off():
            assert self.backoff_reply is not None
            self.finish(job, self._deferrals(job, self.backoff_reply))
            return
        if not self.seated():
            self._reroute_all(self.unseated_reply(), also=job)
            return
        self.jobs.append(job)
        self._wake_one()
        self._maybe_start()

    def _effective_limit(self) -> int:
        """This task's slots of its source's connection limit: zero on some tasks when
        the limit is below the task count (never one on each: that multiplies it)."""
        return task_slots(self._budget.limit, seat=self._seat(), key=self._conn_key)

    def _site_limit_now(self) -> int:
        """The site's cap for this task (its slots), lower while the site is crowded."""
        if self._site_budget.limit >= UNCAPPED:
            return UNCAPPED
        slots = task_slots(self._site_budget.limit, seat=self._seat(), key=self._site_key)
        return self._site_budget.ceiling(slots, self._clock()) if slots else 0

    def seated(self) -> bool:
        """This task holds a connection slot here, in its source's budget and its
        site's: otherwise this queue opens nothing, and its jobs go elsewhere."""
        return self._effective_limit() > 0 and self._site_limit_now() > 0

    def unseated_reply(self) -> Reply:
        _, tasks = self._seat()
        what = ("max_connections" if self._effective_limit() == 0 else "max_mx_connections")
        limit = self._budget.limit if what == "max_connections" else self._site_budget.limit
        return local_reply(
            451, "4.4.5", f"{self.source.name} → {self.route.site}: {what} {limit} is held "
            f"by other sender tasks ({tasks} tasks, this one holds none)")

    def _rate_share(self) -> float:
        _, tasks = self._seat()
        if self._rate_follows_slots and self._budget.limit > 0:
            return self._effective_limit() / self._budget.limit
        return 1.0 / max(1, tasks)

    def waiting_on_limits(self) -> int:
        """Queued jobs that cannot start now: more than this queue's idle connections
        and the connections its budgets still have room for (all of them while it backs
        off or holds no slot). An estimate where queues share a budget: each counts the
        room as its own."""
        if self.backing_off() or not self.seated():
            return len(self.jobs)
        room = min(self._effective_limit() - self._budget.open,
                   self._site_limit_now() - self._site_budget.open)
        return max(0, len(self.jobs) - self.idle - max(0, room))

    def _maybe_start(self) -> None:
        if self._closing or self.backing_off():
            return
        if not self.seated():
            # The fleet grew past a limit: this task's slot went to another. Open
            # connections close as over the limit; waiting jobs go to another source.
            if self.jobs:
                self._reroute_all(self.unseated_reply())
            return
        while len(self.jobs) > self.idle:
            for budget, limit in ((self._budget, self._effective_limit()),
                                  (self._site_budget, self._site_limit_now())):
                if not budget.has_room(limit):
                    budget.wait(self._maybe_start)
                    return
            self._budget.try_acquire(self._effective_limit())
            self._site_budget.try_acquire(self._site_limit_now())
            self.active += 1
            self.idle += 1  # counts as ready for a job until it is serving one
            conn = Connection(self, self._budget, self._site_budget)
            self._connections.add(conn)
            task = asyncio.create_task(conn.run(), name=f"conn {self.source.name}")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def wants(self, conn: Connection, *, served: bool) -> bool:
        """Whether `conn` should open (another) connection: jobs wait, nothing holds
        them back, and it is not one too many, nor (once it served its turn) a place
        another queue waits for at the site."""
        return bool(self.jobs and not self.backing_off() and not self._closing
                    and not self.over_limit(conn)
                    and not (served and self.site_wanted(conn)))

    async def open_session(self) -> tuple[SmtpSession[Job], Path]:
        return await self._connector.open(self.source, self.route, tls_mode=self.tls_mode)

    async def rate_token(self) -> None:
        """Wait for the rate limit's next token, if one applies."""
        if self._rate is not None:
            await self._rate.acquire(self._rate_share())

    @property
    def per_connection(self) -> int:
        return self._per_conn

    def closed(self, conn: Connection, *, cancelled: bool) -> None:
        """`conn` is done: hand its places back, and start what the queue still needs."""
        self.active -= 1
        self.idle -= 1
        if cancelled:
            # Shutting down: hand the places back without starting anything new.
            self._closing = True
        self._connections.discard(conn)
        if conn.retiring:
            conn.budget.retiring -= 1
            conn.site.retiring -= 1
        conn.budget.release()
        conn.site.release()
        if self.jobs and not self._closing:
            if self.backing_off():
                # Put back after another connection's failure drained the queue (a
                # job this one held, pipelined or about to resend): deferred the
                # same way, so none waits for a worker the backoff will not start.
                assert self.backoff_reply is not None
                self._drain(self.backoff_reply)
            else:
                # Jobs it put back (pipelined, or to resend) go to the idle
                # connections first, then to new ones if they are too few.
                for _ in range(len(self.jobs)):
                    if not self._wake_one():
                        break
                self._maybe_start()

    async def body(self, job: Job, session: SmtpSession[Job],
                   here: Path) -> tuple[bytes, bool] | None:
        """What to send on this connection, and whether as 8BITMIME: an 8-bit message
        as it is where the server offers 8BITMIME, else its 7-bit form (RFC 6152).
        None if that could not be made: the job is finished with the reason."""
        if job.seven_bit is None:
            return job.message, False
        if session.eight_bit_mime:
            return job.message, True
        try:
            return await job.seven_bit(), False
        except Exception as exc:  # the message's own failure: it must not end the worker
            log.exception("7-bit form of a message for %s failed", self.route.site)
            reply = local_reply(554, "5.6.3", "8-bit message not converted for a server "
                                f"without 8BITMIME: {exc}")
            self.finish(job, job.done + [Attempt(r, reply, here) for r in job.recipients])
            return None

    def check_pipelining(self, session: SmtpSession[Job]) -> None:
        """A server that mishandled commands pipelined behind the end of data gets no
        more of them from this queue (its jobs were queued again, unattempted)."""
        if session.pipeline_next_failed is not None and not self.pipelining_broken:
            self.pipelining_broken = True
            log.warning("%s → %s: pipelining behind the end of data off: %s",
                        self.source.name, self.route.site, session.pipeline_next_failed)

    def site_wanted(self, conn: Connection) -> bool:
        """Another queue waits for a connection to this site (its cap is reached): a
        connection that has served its turn gives its place up rather than reconnect
        or idle. (Not before it served: two queues would hand a place back and forth
        without ever connecting.)"""
        return conn.site.others_waiting(self._maybe_start)

    def over_limit(self, conn: Connection) -> bool:
        """This connection is one too many for its source's budget or its site's
        (counting out those already closing); if so it is marked closing, so the next
        one to ask is not closed as well."""
        if conn.retiring:
            return True
        budget, site = conn.budget, conn.site
        if (budget.open - budget.retiring > self._effective_limit()
                or site.open - site.retiring > self._site_limit_now()):
            conn.retiring = True
            budget.retiring += 1
            site.retiring += 1
            return True
        return False

    def take_next(self, session: SmtpSession[Job], sent: int, conn: Connection) -> Job | None:
        """The queued job to pipeline behind this message's body, if one is ready now.

        Only over PIPELINING, within max_messages_per_connection, when more jobs wait
        than connections wait for jobs (an idle connection would start one sooner),
        and with its rate token in hand (taken now, never waited for: the body must
        not wait).
        """
        if (not self.pipeline_next or self.pipelining_broken or not session.pipelining
                or sent + 2 > self._per_conn
                or self._closing or not session.is_open or self.over_limit(conn)):
            return None
        jobs = self.jobs
        while jobs and jobs[0].future.done():
            jobs.popleft()  # cancelled by a stopping sender
        if len(jobs) <= self.idle or (
                self._rate is not None and not self._rate.try_acquire(self._rate_share())):
            return None
        return jobs.popleft()

    def settle(self, job: Job, result: TransactionResult, here: Path) -> Reply | None:
        """Record a transaction's replies; re-queue 452'd recipients; report a 421."""
        again = []
        closing = None
        for rcpt in job.recipients:
            reply = result.replies[rcpt]
            if reply.code == 452 and job.resubmits < MAX_RESUBMITS:
                again.append(rcpt)  # too many recipients: the rest go in a new transaction
                continue
            if reply.code == 421:
                closing = reply
            # A 421 in its own transaction is the server's answer to it: tried. Only a
            # recipient refused here, never named to the server, was not.
            if rcpt in result.unsent:
                job.done.append(Attempt(rcpt, reply, here, False))
            else:
                job.done.append(Attempt(rcpt, reply, here, True, size=result.size,
                                        transaction_ms=result.elapsed_ms))
        if again:
            job.recipients = again
            job.resubmits += 1
            self.jobs.appendleft(job)
        else:
            self.finish(job, job.done)
        return closing

    async def next_job(self, conn: Connection) -> Job | None:
        """The next job for this connection; None to close it (idle, closing, or one
        connection too many after a policy reload lowered the limit)."""
        deadline: float | None = None
        try:
            while not self._closing and not self.over_limit(conn):
                while self.jobs:
                    job = self.jobs.popleft()
                    if not job.future.done():  # cancelled by a stopping sender: skip it
                        return job
                if self.site_wanted(conn):
                    break  # idle, and another queue waits for a connection to the site
                now = time.monotonic()
                deadline = now + IDLE_TIMEOUT if deadline is None else deadline
                if now >= deadline:
                    break
                await self._idle(deadline - now)
        except BaseException:
            self._pass_on()
            raise
        self._pass_on()
        return None

    def _pass_on(self) -> None:
        """A connection leaves without a job while jobs wait (one too many, giving the
        site up, or cancelled after its wake-up): the wake-up goes to another idle
        connection, or a job would wait for an idle timeout."""
        if self.jobs and not self._closing:
            self._wake_one()

    async def _idle(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, to be woken for a job (or a re-check)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        # A timer, not asyncio.timeout: no context manager per wait on this path.
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()  # skipped by the next wake-up

    @property
    def waiting_connections(self) -> int:
        """Idle connections waiting for a job now."""
        return sum(not waiter.done() for waiter in self._waiters)

    def _wake_one(self) -> bool:
        """Wake the connection idle the shortest time (it is the warmest; the others
        reach their idle timeout and close when the load no longer needs them).
        False if none was waiting."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _wake_all(self) -> None:
        """Wake every idle connection to re-check its limits (a reload, a site wanted
        by another queue, closing)."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            _wake(waiter)

    def closed_by_server(self, reply: Reply, here: Path, *, tried: Job | None = None) -> None:
        """The server closed the connection after `reply` (a 421). A rate limit answered
        inside a transaction that a reduce rule paces (the adaptive engine cuts this
        source's rate there) neither backs the site off nor defers the queued jobs:
        they wait for the next connection at the cut rate. Backing off as well would
        stop the source for `site_backoff` at each cut, and the rate would never be
        found. Any other 421 backs off."""
        if tried is None and self._paced(reply):
            log.debug("%s → %s: %s; paced by the adaptive rate, no backoff",
                      self.source.name, self.route.site, reply)
            return
        self._start_backoff(reply)
        self._drain(reply, here, tried=tried)

    def _template(self) -> Path:
        return self._connector.template(self.source, self.route, tls_mode=self.tls_mode)

    async def open_failed(self, exc: SessionError, conn: Connection) -> None:
        """Act on whose fault a failed connection was (attribution.py): a proxy's
        failure suspends the source and sends the jobs to other sources; a
        destination's backs off this (source, site), unless it only said it has too
        many connections while this task holds others there."""
        template = self._template()
        if exc.target is not None:
            template = replace(template, mx=exc.target.mx_name, mx_ip=exc.target.ip)
        fault = await attribute(exc, node=self.source.node, mx=template.mx,
                                proxy_check=self._proxy_check)
        if isinstance(fault, Forbidden):
            # Refused before connecting (the route is screened before a source is
            # chosen, so only a route that changed under this queue gets here).
            for job in self._take_all():
                self.finish(job, job.done + [Attempt(r, fault.reply, template, False)
                                              for r in job.recipients])
        elif isinstance(fault, ProxyDown):
            if self._proxy_down is not None:
                self._proxy_down(fault.node, fault.why)
            self._reroute_all(fault.reply)
        elif not (exc.stage == "greeting" and self._crowded(exc.reply, conn)):
            self._connection_failed(fault.reply, template)

    def _crowded(self, reply: Reply, conn: Connection) -> bool:
        """A 421 "too many connections" while this task holds other connections to the
        site: lower the site's budget to those, for CROWDED_HOLD, and let the queued
        jobs wait for them (no backoff, no deferral: none of them was tried)."""
        if reply.code != 421 or not TOO_MANY_CONNECTIONS.search(reply.text):
            return False
        others = conn.site.open - 1  # this connection still holds its place
        if others < 1:
            return False
        conn.site.lower(others, until=self._clock() + CROWDED_HOLD)
        log.info("%s → %s: %s; at most %d connections there for %.0f s", self.source.name,
                 self.route.site, reply, self._site_limit_now(), CROWDED_HOLD)
        return True

    def _reroute_all(self, reply: Reply, *, also: Job | None = None) -> None:
        for job in self._take_all() + ([also] if also is not None else []):
            if job.done:
                # Part of it was already attempted on this source: report what happened
                # and defer the rest (not counted) rather than splitting the job.
                self.finish(job, self._deferrals(job, reply))
            elif not job.future.done():
                job.future.set_exception(Reroute(reply))

    def _connection_failed(self, reply: Reply, template: Path) -> None:
        if reply.permanent:
            # A 5xx greeting or EHLO refuses the connection, not a recipient: the site
            # may serve later (Postfix's smtp_skip_5xx_greeting), so nothing bounces.
            reply = local_reply(451, "4.4.2", f"the destination refused the connection: {reply}")
        # The connection was opened for the first job waiting: its attempt. The others
        # waited behind it and were not tried.
        tried = next((j for j in self.jobs if not j.future.done()), None)
        self._start_backoff(reply)
        self._drain(reply, template, tried=tried)

    def _start_backoff(self, reply: Reply) -> None:
        self.backoff_until = self._clock() + self.backoff
        self.backoff_reply = local_reply(
            451, "4.4.5", f"{self.source.name} → {self.route.site} backing off after: {reply}"
        )

    def _drain(self, reply: Reply, template: Path | None = None, *,
               tried: Job | None = None) -> None:
        for job in self._take_all():
            self.finish(job, self._deferrals(job, reply, template, tried=job is tried))

    def release(self, held: Callable[[Job], list[Attempt] | None]) -> int:
        """Finish the queued jobs for which `held` gives attempts (an operator control
        now holds them); the others keep their places. Jobs already on a connection
        (sending, or pipelined behind a body) finish their transactions. Returns how
        many were released."""
        kept: deque[Job] = deque()
        released = 0
        for job in self.jobs:
            attempts = None if job.future.done() else held(job)
            if attempts is None:
                kept.append(job)
            else:
                self.finish(job, job.done + attempts)
                released += 1
        self.jobs.clear()
        self.jobs.extend(kept)
        return released

    def _take_all(self) -> list[Job]:
        jobs = list(self.jobs)
        self.jobs.clear()
        return jobs

    def _deferrals(self, job: Job, reply: Reply, template: Path | None = None, *,
                   tried: bool = False) -> list[Attempt]:
        base = template or self._template()
        return job.done + [Attempt(r, reply, base, tried) for r in job.recipients]

    @staticmethod
    def finish(job: Job, attempts: list[Attempt]) -> None:
        if not job.future.done():
            job.future.set_result(attempts)

    async def close(self) -> None:
        self._closing = True
        self._wake_all()
        if self._workers:
            # Past the drain deadline already: QUIT politely, but briefly (the task's
            # stop timeout leaves 5 s after the deadline for all of the shutdown).
            await asyncio.wait(set(self._workers), timeout=2.0)

