"""Does the sender find a provider's hidden rate? A run against the simulated provider.

The local stack's sender mails `sim-provider.test` (sim_provider) from one source
whose static limit is five times the hidden rate R. A feeder keeps a bounded backlog
waiting, so the sender always has more mail than R lets through. The MX counts
what it accepted and refused each second; the figures (convergence_figures) say how
soon the sending rate (attempts) settled within 20 % of R, on what rate, and what
share of the attempts after that were still refused. Then R doubles while mail flows, and the
same figures say whether the sender found the new rate.

A phase starts at the first second the MX sees traffic (phase one: the sender's own
start-up does not count) or when R changes (phase two), and ends once the rate has
been within the band for `settle` seconds after converging, or at `phase_limit`.
Deferred attempts are counted where they happen, at the MX: a refused message is
deferred by the sender and tried again. Everything is bounded in count and time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.convergence_figures import (
    DEFAULT_WINDOW,
    PhaseFigures,
    per_second,
    phase_figures,
)
from quiver.devstack.feeder import FeederThread
from quiver.devstack.samples import render
from quiver.devstack.servers.throttled_mx import ThrottledMx
from quiver.devstack.sim_provider import DOMAIN, POOL, sim_stack, start_sim_mx
from quiver.devstack.stack import LocalStack

# Messages waiting beyond what the MX has accepted: more than the static limit lets
# the sender try in a few seconds, so it is never short of mail, and few enough that
# the queue stays small.
DEFAULT_BACKLOG = 400
# How often the run looks at the MX's counts (and the feeder tops the backlog up).
POLL = 0.25
# The first message must reach the MX within this (the sender starts, reads the queue).
FIRST_TRAFFIC_TIMEOUT = 60.0
ENQUEUE_BATCH = 10


class ConvergenceError(RuntimeError):
    """The run could not go on (a sender exited, the feeder failed, no traffic)."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    hidden_rate: float = 20.0
    # R after the change; 0 or less: no second phase.
    changed_rate: float = 40.0
    adaptive: bool = True
    # Seconds within the band after converging before a phase ends early.
    settle: int = 10
    # A phase never runs longer than this (seconds).
    phase_limit: float = 70.0
    backlog: int = DEFAULT_BACKLOG
    # The feeder enqueues at most this many messages in all.
    max_messages: int = 20_000
    window: int = DEFAULT_WINDOW
    # [adaptive] settings merged over the simulated provider's (AIMD step, windows).
    adaptive_settings: dict[str, Any] | None = None
    # As LocalStack's: None sends through HAProxy when installed, True insists.
    haproxy: bool | None = None


@dataclass
class Feeder:
    """Keeps about `backlog` messages to the provider enqueued and not yet accepted
    by its MX, on a thread, until stopped or `limit` messages in all."""

    stack: LocalStack
    mx: ThrottledMx
    backlog: int
    limit: int
    sent: int = 0
    _thread: FeederThread | None = None

    def start(self) -> None:
        self._thread = FeederThread(self.stack, name="sim-feeder", feed=self._feed)
        self._thread.start()

    def _accepted(self) -> int:
        return sum(c.accepted for c in self.mx.gate.counts())

    def _feed(self, client: QuiverClient, stop: threading.Event) -> None:
        while not stop.is_set() and self.sent < self.limit:
            want = min(self.backlog - (self.sent - self._accepted()), self.limit - self.sent)
            if want < ENQUEUE_BATCH:
                stop.wait(POLL)
                continue
            for _ in range(want // ENQUEUE_BATCH):
                result = client.enqueue_batch([self._message(self.sent + i)
                                               for i in range(ENQUEUE_BATCH)])
                if result.failed:
                    raise RuntimeError(f"enqueue failed: {result.failed}")
                self.sent += ENQUEUE_BATCH

    @staticmethod
    def _message(n: int) -> OutboundMessage:
        mid = f"sim-{n:06d}"
        to = [f"user{n}@{DOMAIN}"]
        return OutboundMessage(
            id=mid, sender="bounces@news.quiver-demo.test", to=to, pool=POOL,
            raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test", to=to,
                       subject=f"simulated provider {n}"))

    def check(self) -> None:
        if self._thread is not None:
            self._thread.check(ConvergenceError)

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()


@dataclass
class Runner:
    stack: LocalStack
    mx: ThrottledMx
    settings: RunSettings
    say: Callable[[str], None] = lambda _: None

    def _alive(self) -> None:
        for process in self.stack.senders:
            if process.poll() is not None:
                raise ConvergenceError(f"a sender exited ({process.returncode}); see "
                                       f"{self.stack.root / 'logs'}")

    def first_traffic(self) -> int:
        """The first second (of the MX's clock) with an attempt at the MX."""
        deadline = time.monotonic() + FIRST_TRAFFIC_TIMEOUT
        while not (counts := self.mx.gate.counts()):
            self._alive()
            if time.monotonic() > deadline:
                raise ConvergenceError(
                    f"no message reached the simulated MX within {FIRST_TRAFFIC_TIMEOUT:.0f}s")
            time.sleep(POLL)
        return counts[0].second

    def phase(self, start: int, rate: float, feeder: Feeder) -> PhaseFigures:
        """Watch from second `start` until settled or the phase limit; its figures."""
        settings = self.settings
        while True:
            self._alive()
            feeder.check()
            end = math.floor(self.mx.gate.now())  # the seconds before this are whole
            rows = [(c.second, c.accepted, c.refused) for c in self.mx.gate.counts(since=start)]
            figures = phase_figures(per_second(rows, start=start, end=end), rate=rate,
                                    window=settings.window, min_settled=settings.settle)
            if figures.converged or end - start >= settings.phase_limit:
                self.say(f"R={rate:g}: " + (
                    f"converged after {figures.seconds_to_converge}s on "
                    f"{figures.converged_rate} msg/s" if figures.converged
                    else f"not converged in {figures.seconds}s "
                         f"({figures.converged_rate} msg/s)"))
                return figures
            time.sleep(POLL)


def run_once(root: Path, settings: RunSettings, *,
             say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One run on a fresh local stack; the figures of each phase (see module doc)."""
    stack = sim_stack(root, hidden_rate=settings.hidden_rate, adaptive=settings.adaptive,
                      adaptive_settings=settings.adaptive_settings,
                      haproxy=settings.haproxy)
    stack.start()
    try:
        with start_sim_mx(stack, hidden_rate=settings.hidden_rate) as mx:
            stack.start_sender()
            say(f"local stack up ({stack.describe_egress()}), adaptive "
                f"{'on' if settings.adaptive else 'off'}, hidden rate {settings.hidden_rate:g}/s")
            feeder = Feeder(stack, mx, backlog=settings.backlog, limit=settings.max_messages)
            feeder.start()
            try:
                runner = Runner(stack, mx, settings, say=say)
                first = runner.first_traffic()
                starts = [first]
                phases = [runner.phase(first, settings.hidden_rate, feeder)]
                if settings.changed_rate > 0:
                    mx.set_rate(settings.changed_rate)
                    say(f"hidden rate now {settings.changed_rate:g}/s")
                    starts.append(math.ceil(mx.gate.now()))
                    phases.append(runner.phase(starts[-1], settings.changed_rate, feeder))
            finally:
                feeder.stop()
                # The sender stops before its MX does: nothing is mid-transaction there.
                for process in stack.senders:
                    stack.stop_sender(process)
            end = math.floor(mx.gate.now())
            rows = [(c.second, c.accepted, c.refused) for c in mx.gate.counts(since=first)]
            seconds = per_second(rows, start=first, end=end)
            return {
                "adaptive": settings.adaptive,
                "messages_enqueued": feeder.sent,
                "phases": [p.as_dict() for p in phases],
                # Second by second from the first attempt: what the figures came from.
                "phase_starts": [s - first for s in starts],
                "accepted_per_second": [s.accepted for s in seconds],
                "refused_per_second": [s.refused for s in seconds],
            }
    finally:
        stack.stop()
