"""Sender memory with N messages in flight: the real engine, measured in its own process.

The intake, lifecycle, scheduler and SMTP sessions are the production code; the
queue is a feeder that makes each message when it is received and keeps nothing
(as SQS holds its messages elsewhere; moto's server needs minutes to hand out
10,000 messages, which would measure moto, not the sender), and every recipient
is a tarpit at a local MX, so the engine holds every message at once. Prints
one JSON line: messages held, the process's RSS and peak RSS in MB.

    python bench/memory.py --messages 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from quiver.bounce import default_classifier
from quiver.devstack.samples import render
from quiver.dkim import SignerSet
from quiver.envelope import Envelope, encode
from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.sender.collector import tune_collector
from quiver.sender.complete import Completer
from quiver.sender.engine import Sender
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.base import Outgoing, Received
from quiver.storage.memory import MemoryBodyStore, MemoryEventSink, MemoryQueue

POLICY = """
local_only = true
default_pool = "p"
[delivery]
ehlo = "bench.quiver.local.test"
port = {port}
verify_tls = false
allow_networks = ["127.0.0.0/8"]
routes = {{ "mem.test" = "127.0.0.1" }}
[intake]
receivers = 4
max_inflight_messages = {inflight}
max_inflight_bytes = "1GiB"
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.quiver.local.test"
[pools.p]
sources = ["a"]
"""


class FeederQueue:
    """Hands out `count` fresh messages, then nothing; remembers no bodies."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility: int
                      ) -> list[Received]:
        out = []
        while self.sent < self.count and len(out) < max_messages:
            i = self.sent
            self.sent += 1
            rcpt = f"tarpit-{i}@mem.test"
            raw = render(message_id=f"mem-{i}", from_addr="hello@news.quiver-demo.test",
                         to=[rcpt], subject=f"memory {i}")
            env = Envelope(id=f"mem-{i}", sender="b@news.quiver-demo.test",
                           recipients=(rcpt,), raw=raw)
            out.append(Received(body=encode(env), receipt=f"r{i}", message_id=f"q{i}",
                                sent_at=time.time()))
        if not out:
            await asyncio.sleep(min(wait_seconds, 0.5))
        return out

    async def delete(self, receipts: Sequence[str]) -> None:
        return None

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        return None

    async def send(self, messages: Sequence[Outgoing]) -> None:
        return None


def status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(messages: int, mx_port: int, timeout: float, *, collector: str
                  ) -> dict[str, float | str]:
    policy = parse_policy(POLICY.format(port=mx_port, inflight=messages))
    queue, dlq = FeederQueue(messages), MemoryQueue("dlq")
    baseline = status("VmRSS")
    completer = Completer(queue=queue, dlq=dlq, sink=MemoryEventSink())
    scheduler = Scheduler(policy=policy, resolver=MxResolver(routes=dict(policy.delivery.routes)),
                          picker=SourcePicker(policy))
    handler = MessageHandler(policy=policy, transport=scheduler, signers=SignerSet([]),
                             bodies=MemoryBodyStore(), completer=completer,
                             classifier=default_classifier(), rng=random.Random(1))
    sender = Sender(intake=policy.intake, queue=queue, handler=handler, completer=completer)
    if collector == "tuned":
        tune_collector()  # as `quiver sender` does once it is built
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        held = sender.stats.received - sender.stats.completed - sender.stats.returned
        if held >= messages:
            await asyncio.sleep(2.0)  # let the connections fill up too
            break
    result: dict[str, float | str] = {
        "messages": messages, "held": held, "collector": collector,
        "rss_mb": round(status("VmRSS"), 1), "peak_rss_mb": round(status("VmHWM"), 1),
        "startup_rss_mb": round(baseline, 1)}
    task.cancel()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--collector", choices=["tuned", "default"], default="tuned",
                        help="the sender's garbage-collector tuning, or CPython's defaults")
    args = parser.parse_args()
    from quiver.devstack.servers.mx import spawn_mx

    with tempfile.TemporaryDirectory() as tmp:
        mx = spawn_mx(store_dir=Path(tmp) / "mx", tarpit_seconds=30.0)
        try:
            result = asyncio.run(measure(args.messages, mx.address[1], args.timeout,
                                         collector=args.collector))
        finally:
            mx.stop()
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
