"""The operator-controls drill on the local stack: mail flows to two demo domains at
two providers through two (or more) sender processes while `quiver ctl` pauses one
provider, resumes it, stops all sending and starts it again. What the local MX saw (its rcpts.jsonl,
timestamped) tells how soon each control was in force on every sender.

Used by the integration test (tests/integration/test_controls_stack.py) and the
benchmark (bench/controls.py). Everything runs on loopback; the feeder is bounded
in count and time and stops by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.feeder import FeederThread
from quiver.devstack.samples import render
from quiver.devstack.stack import LocalStack

# delta.test's MX set starts with mx2, which the drill's policy makes a provider of
# its own (providers match in policy order); alpha.test stays on mx1, quiver-local.
PAUSED_DOMAIN = "delta.test"
PAUSED_PROVIDER = "quiver-remote"
OTHER_DOMAIN = "alpha.test"
LOCAL_PROVIDERS = '[providers]\nquiver-local = ["*.quiver.local.test"]'
DRILL_PROVIDERS = (f'[providers]\n{PAUSED_PROVIDER} = ["mx2.quiver.local.test"]\n'
                   'quiver-local = ["*.quiver.local.test"]')
# How long after a command the MX is watched: past the 10 s the controls promise.
WINDOW = 12.0
# What the drill's senders run with: a paused message is looked at again soon, so a
# resume shows within seconds (production: 60 s).
POLICY_ADDITION = '\n[controls]\npoll = "2s"\nrecheck = "5s"\n'


class DrillError(AssertionError):
    """The drill could not observe what it waits for within its deadline."""


def policy_with_controls(stack: LocalStack) -> Path:
    """A copy of the stack's policy with the drill's two providers and `[controls]`."""

    def edit(text: str) -> str:
        if LOCAL_PROVIDERS not in text:
            raise DrillError("the local stack's [providers] table is not as the drill expects")
        return text.replace(LOCAL_PROVIDERS, DRILL_PROVIDERS) + POLICY_ADDITION

    return stack.policy_variant("controls", edit)


@dataclass
class Feeder:
    """Enqueues one message to each domain every `interval` seconds, on a thread, until
    stopped or `limit` rounds (then it stops by itself)."""

    stack: LocalStack
    interval: float = 0.4
    limit: int = 1500
    sent: dict[str, int] = field(default_factory=dict)
    _thread: FeederThread | None = None

    def start(self) -> None:
        self._thread = FeederThread(self.stack, name="controls-feeder", feed=self._feed)
        self._thread.start()

    def _feed(self, client: QuiverClient, stop: threading.Event) -> None:
        for n in range(self.limit):
            if stop.is_set():
                return
            batch = []
            for domain in (PAUSED_DOMAIN, OTHER_DOMAIN):
                mid = f"ctl-{domain.split('.')[0]}-{n:05d}"
                to = [f"user{n}@{domain}"]
                batch.append(OutboundMessage(
                    id=mid, sender="bounces@news.quiver-demo.test", to=to,
                    raw=render(message_id=mid, from_addr="hello@news.quiver-demo.test",
                               to=to, subject=f"controls drill {n}")))
            result = client.enqueue_batch(batch)
            if result.failed:
                raise RuntimeError(f"enqueue failed: {result.failed}")
            for domain in (PAUSED_DOMAIN, OTHER_DOMAIN):
                self.sent[domain] = self.sent.get(domain, 0) + 1
            stop.wait(self.interval)

    def check(self) -> None:
        if self._thread is not None:
            self._thread.check(DrillError)

    def stop(self) -> int:
        """Stop; the number of messages enqueued."""
        if self._thread is not None:
            self._thread.stop()
        return sum(self.sent.values())


@dataclass
class Drill:
    stack: LocalStack
    # Progress lines (a bench prints them on stderr); silent by default.
    say: Callable[[str], None] = lambda _: None
    log: list[str] = field(default_factory=list)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`quiver ctl ...` as an operator runs it; fails the drill unless it exits 0."""
        result = subprocess.run([sys.executable, "-m", "quiver", "ctl", *args],
                                env={**os.environ, **self.stack.env()}, capture_output=True,
                                text=True, timeout=120)
        self.log.append(f"$ quiver ctl {' '.join(args)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise DrillError(f"quiver ctl {' '.join(args)} exited {result.returncode}: "
                             f"{result.stderr}")
        return result

    def rcpts(self) -> list[tuple[str, float]]:
        """(domain, epoch seconds) of every RCPT TO the local MX saw."""
        assert self.stack.mx is not None
        return [(r["rcpt"].rpartition("@")[2].lower(), datetime.fromisoformat(r["at"]).timestamp())
                for r in self.stack.mx.rcpts()]

    def wait_until(self, what: str, condition: Callable[[], bool], *,
                   timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for process in self.stack.senders:
                if process.poll() is not None:
                    raise DrillError(f"a sender exited ({process.returncode}) while waiting "
                                     f"for {what}")
            if time.monotonic() > deadline:
                raise DrillError(f"no {what} within {timeout:.0f}s")
            time.sleep(0.25)

    def flowing(self, domain: str, *, after: float) -> bool:
        return any(d == domain and at > after for d, at in self.rcpts())

    def pause_cycle(self) -> dict[str, float]:
        """Pause PAUSED_PROVIDER (PAUSED_DOMAIN's) while OTHER_DOMAIN flows, then resume
        it. Returns pause_effective_s (command issued → last RCPT to it) and resume_s
        (resume issued → first RCPT to it again)."""
        start = time.time()
        self.wait_until("mail to both domains", lambda: self.flowing(PAUSED_DOMAIN, after=start)
                        and self.flowing(OTHER_DOMAIN, after=start))
        issued = time.time()
        self.ctl("pause", "--provider", PAUSED_PROVIDER, "--reason", "controls drill")
        self.say(f"paused {PAUSED_PROVIDER} ({PAUSED_DOMAIN})")
        # The other domain still flows past the window: that is the proof of both.
        self.wait_until(f"mail to {OTHER_DOMAIN} during the pause",
                        lambda: self.flowing(OTHER_DOMAIN, after=issued + WINDOW))
        last = max((at for d, at in self.rcpts() if d == PAUSED_DOMAIN), default=issued)
        effective = max(0.0, last - issued)
        resumed = time.time()
        self.ctl("resume", "--provider", PAUSED_PROVIDER)
        self.wait_until(f"mail to {PAUSED_DOMAIN} after the resume",
                        lambda: self.flowing(PAUSED_DOMAIN, after=resumed))
        back = min(at for d, at in self.rcpts() if d == PAUSED_DOMAIN and at > resumed)
        self.say(f"pause in force after {effective:.2f}s; resumed, mail back after "
                 f"{back - resumed:.2f}s")
        return {"pause_effective_s": effective, "resume_s": back - resumed}

    def stop_cycle(self, *, during: Callable[[], Any] = lambda: None) -> dict[str, float]:
        """Stop all sending, wait the window (calling `during` in it: a test starts a
        new sender there, as autoscaling would), then start. Returns stop_effective_s
        (command → last RCPT anywhere) and start_s (start → first RCPT again)."""
        start = time.time()
        self.wait_until("mail flowing", lambda: self.flowing(OTHER_DOMAIN, after=start))
        issued = time.time()
        self.ctl("stop", "--reason", "controls drill")
        self.say("stopped")
        during()
        self.wait_until("the end of the window", lambda: time.time() > issued + WINDOW)
        last = max((at for _, at in self.rcpts()), default=issued)
        effective = max(0.0, last - issued)
        started = time.time()
        self.ctl("start")
        self.wait_until("mail after the start",
                        lambda: self.flowing(OTHER_DOMAIN, after=started))
        back = min(at for _, at in self.rcpts() if at > started)
        self.say(f"stop in force after {effective:.2f}s; started, mail back after "
                 f"{back - started:.2f}s")
        return {"stop_effective_s": effective, "start_s": back - started}
