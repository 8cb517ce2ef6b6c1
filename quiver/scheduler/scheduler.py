"""The scheduler: recipient domain → route → egress source → ready queue → attempts.

It is the sender's `Transport`: the lifecycle hands it one message's recipients
at one domain and awaits their attempts, while connections stay open across
messages and throttles hold per (source, destination).

The resolved route is screened by the destination guard before a source is
chosen: forbidden MX addresses never reach a ready queue, a proxy or a source,
and a domain whose every MX address is forbidden is bounced (5.4.4) at once.

A source whose proxy is down, or whose ready queue holds no slot of a cluster-wide
connection limit on this task (ready.py), is passed over for the pool's other
sources; with none left the recipients are deferred, unattempted. So is a warming
source whose cap for the provider is used up today (quiver.warmup): the recipients it
was given and did not attempt go back to its cap.

Operator controls (quiver.controls) are checked once a recipient is routed, before
its job is queued: a stop, or a pause by pool, domain, source or provider, hands it
back unattempted with a `Hold` (the lifecycle re-enqueues it, no attempt counted).
A control that appears releases the queued jobs it holds the same way; jobs already
on a connection finish their transactions (no session is cut mid-DATA).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from quiver.controls.active import HOLD_STATUS, ActiveControls, hold_reason, hold_until
from quiver.controls.model import Control
from quiver.delivery import Attempt, Hold, Path
from quiver.policy import Policy, Source
from quiver.policy.handle import PolicyHandle, handle_of
from quiver.routing.mx import MxResolver, Route, RouteError
from quiver.routing.safety import DestinationGuard, ForbiddenRoute, screen
from quiver.routing.sources import NoSourceAvailable, SourcePicker
from quiver.scheduler.budget import SOLO, Budgets
from quiver.scheduler.connector import Connector
from quiver.scheduler.health import ProxyHealth
from quiver.scheduler.outcomes import LastErrors
from quiver.scheduler.ready import Job, ReadyQueue, Reroute
from quiver.scheduler.throttle import Destination, resolve
from quiver.scheduler.tls import tls_mode_for
from quiver.smtp.reply import Reply, local_reply

log = logging.getLogger("quiver.scheduler")

# A job whose source's proxy died is offered to this many sources before deferring.
MAX_REROUTES = 4


class Scheduler:
    def __init__(
        self,
        *,
        policy: Policy | PolicyHandle,
        resolver: MxResolver,
        picker: SourcePicker,
        connector: Connector | None = None,
        seat: Callable[[], tuple[int, int]] = lambda: SOLO,
        health: ProxyHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
        controls: ActiveControls | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.health = health
        # None: no operator controls (tools, tests of other parts).
        self.controls = controls
        self._wall_clock = wall_clock
        if controls is not None:
            controls.listen(self._controls_changed)
        # Live sections (throttles, retry, tls, delivery.pipeline_next) are read through
        # the shared handle; the rest is restart-only (the connector and the guard keep
        # the start-up policy).
        self.policy = handle_of(policy)
        policy = self.policy.current
        self._resolver = resolver
        self._picker = picker
        self._clock = clock
        self._connector = connector or Connector(policy, clock=clock)
        self._guard = DestinationGuard(policy.delivery.allow_networks)
        self._seat = seat
        self.budgets = Budgets(clock=clock)
        self.queues: dict[tuple[str, str], ReadyQueue] = {}
        # For the live status (quiver.status): what each site said last when it failed.
        self.last_errors = LastErrors(clock=clock)
        # Sees every delivery's attempts (the adaptive engine); None: nobody watches.
        self.observe: Callable[[Sequence[Attempt]], None] | None = None
        # Whether a 421 from (source, provider) is a rate limit the adaptive engine
        # answers by cutting the rate (then the site is not backed off); None: never.
        self.paces: Callable[[str, str | None, Reply], bool] | None = None

    async def deliver(
        self, *, pool: str, domain: str, sender: str, recipients: Sequence[str], message: bytes,
        seven_bit: Callable[[], Awaitable[bytes]] | None = None,
    ) -> list[Attempt]:
        try:
            route = screen(await self._resolver.route(domain), self._guard)
        except RouteError as exc:
            reply = local_reply(exc.code, exc.enhanced, exc.text)
            # A DNS answer (or its failure) is the destination's; a route refused here
            # for its forbidden addresses tried nothing there.
            tried = not isinstance(exc, ForbiddenRoute)
            attempts = [Attempt(rcpt=r, reply=reply, counts=tried) for r in recipients]
            # No route, no site: the domain stands for it.
            self.last_errors.add(domain, attempts)
            return attempts
        last: Reroute | None = None
        # Sources passed over for this delivery: their proxy is down, or they hold no
        # slot here (a small limit's slots are on other tasks).
        avoid: set[str] = set()
        for _ in range(MAX_REROUTES):
            try:
                source = await self._picker.pick(pool, provider=route.provider,
                                                 recipients=len(recipients), avoid=avoid)
            except NoSourceAvailable as exc:
                text = str(exc) if last is None else f"{exc}; last: {last.reply.text}"
                reply = local_reply(451, "4.4.1", text)
                return [Attempt(rcpt=r, reply=reply, counts=False) for r in recipients]
            if self.controls is not None and (held := self.controls.before_attempt(
                    pool=pool, domain=domain, source=source.name,
                    provider=route.provider)) is not None:
                self._picker.give_back(source.name, route.provider, len(recipients))
                return self._held(held, recipients, Path(source=source.name,
                                                         provider=route.provider))
            queue = self._queue(source, route, domain)
            if not queue.seated():
                self._picker.give_back(source.name, route.provider, len(recipients))
                avoid.add(source.name)
                last = Reroute(queue.unseated_reply())
                continue
            future: asyncio.Future[list[Attempt]] = asyncio.get_running_loop().create_future()
            queue.submit(Job(sender=sender, recipients=list(recipients), message=message,
                             future=future, seven_bit=seven_bit, pool=pool, domain=domain))
            try:
                attempts = await future
            except Reroute as exc:
                last = exc  # the source's proxy is down, or its slot went: the next source
                self._picker.give_back(source.name, route.provider, len(recipients))
                avoid.add(source.name)
                continue
            self._picker.settle(source.name, route.provider, attempts)
            queue.outcomes.add(attempts)
            self.last_errors.add(route.site, attempts)
            if self.observe is not None:
                self.observe(attempts)
            return attempts
        assert last is not None
        return [Attempt(rcpt=r, reply=last.reply, counts=False) for r in recipients]

    def connections(self) -> Counter[tuple[str, str | None]]:
        """Open connections per (source, provider) now (None: no provider matched)."""
        out: Counter[tuple[str, str | None]] = Counter()
        for queue in self.queues.values():
            if queue.active:
                out[(queue.source.name, queue.destination.provider)] += queue.active
        return out

    def waiting_on_limits(self) -> int:
        """Jobs queued behind a connection limit, a rate or a backoff (ready.py): mail in
        hand that more sender tasks would not send sooner."""
        return sum(q.waiting_on_limits() for q in self.queues.values())

    def _held(self, control: Control, recipients: Sequence[str], path: Path) -> list[Attempt]:
        why = hold_reason(control)
        hold = Hold(until=hold_until(control, now=self._wall_clock(),
                                     recheck=self.policy.current.controls.recheck), why=why)
        reply = local_reply(451, HOLD_STATUS, why)
        return [Attempt(rcpt=r, reply=reply, path=path, counts=False, hold=hold)
                for r in recipients]

    def _controls_changed(self) -> None:
        """A control appeared: the queued jobs it holds go back, unattempted."""
        controls = self.controls
        assert controls is not None
        released = 0
        for queue in self.queues.values():
            source, provider = queue.source.name, queue.route.provider

            def held(job: Job, source: str = source,
                     provider: str | None = provider) -> list[Attempt] | None:
                control = controls.before_attempt(pool=job.pool, domain=job.domain,
                                                  source=source, provider=provider)
                if control is None:
                    return None
                return self._held(control, job.recipients,
                                  Path(source=source, provider=provider))

            released += queue.release(held)
        if released:
            log.info("operator controls: %d queued deliveries held back", released)

    def static_rate(self, source: str, provider: str) -> float | None:
        """The max_rate (messages per second, cluster-wide) policy's throttles set for
        `source` at `provider`, whatever the site: the adaptive engine's ceiling."""
        limits = resolve(self.policy.current.throttles, Destination(
            source=source, site="", domain="", provider=provider, mx_hosts=()))
        rate = limits.max_rate
        return None if rate is None or isinstance(rate.value, int) else rate.value.per_second

    def adapt(self, source: str, provider: str, per_second: float) -> None:
        """The cluster's adapted rate for (source, provider): the queues there pace at
        the lower of it and their static rate from now on (infinite: the static rate)."""
        if self.budgets.adapted.get((source, provider), math.inf) == per_second:
            return
        if math.isinf(per_second):
            del self.budgets.adapted[(source, provider)]
        else:
            self.budgets.adapted[(source, provider)] = per_second
        for queue in self.queues.values():
            if queue.source.name == source and (queue.destination.provider or "") == provider:
                queue.rebind(self.budgets)

    def apply_policy(self, policy: Policy) -> None:
        """Policy reload: update the handle, then rebind."""
        self.policy.update(policy)
        self.rebind()

    def rebind(self) -> None:
        """After the handle's policy changed: every ready queue rebinds to its limits
        under the new throttles and to its TLS mode; retry backoff and pipelining are
        read from the handle at each queue's next decision."""
        for queue in self.queues.values():
            queue.rebind(self.budgets)

    def _queue(self, source: Source, route: Route, domain: str) -> ReadyQueue:
        key = (source.name, route.site)
        queue = self.queues.get(key)
        if queue is None:
            # The first domain seen at a site stands for it when throttles name domains.
            destination = Destination(
                source=source.name, site=route.site, domain=domain, provider=route.provider,
                mx_hosts=tuple(h.name for h in route.hosts),
            )
            policy = self.policy.current
            queue = self.queues[key] = ReadyQueue(
                source=source, route=route, limits=resolve(policy.throttles, destination),
                budgets=self.budgets, destination=destination, connector=self._connector,
                policy=self.policy, seat=self._seat,
                proxy_check=self.health.check if self.health else None,
                proxy_down=self._proxy_down,
                tls_mode=tls_mode_for(policy.tls, destination), clock=self._clock,
                paced=self._paced(source.name, route.provider),
            )
        else:
            queue.route = route  # the MX set's addresses may have changed (TTL)
        return queue

    def _paced(self, source: str, provider: str | None) -> Callable[[Reply], bool]:
        # Read at each 421 (the engine is attached after the scheduler is built).
        return lambda reply: self.paces is not None and self.paces(source, provider, reply)

    def _proxy_down(self, node: str, why: str) -> None:
        if self.health is not None:
            self.health.mark(node, False, why)

    async def close(self) -> None:
        await asyncio.gather(*(q.close() for q in self.queues.values()))
