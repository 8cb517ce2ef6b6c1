"""moto's CPU per message in the end-to-end benchmark's SQS cycle: plain against lean.

One client (the sender's lean SQS client, so the client costs little of the two
cores) runs the cycle the sender and the feeder make against moto's server, on
the benchmark's outbound queue (redrive policy included): about `OUTSTANDING`
messages enqueued and not deleted, `IN_FLIGHT` of them received and held
(invisible, as the sender holds them), and per ten messages one
SendMessageBatch (bodies of ~5 KB), one ReceiveMessage(10, visibility 120) and
one DeleteMessageBatch. The figure is moto's own CPU (user + system from /proc)
over the cycle, per message. Every run starts a fresh moto; the kinds alternate
in order run by run (the machine may be shared and noisy) and the medians are
printed. Loopback only; bounded in calls and in time.

    .venv/bin/python bench/moto_cost.py [--messages 5000] [--runs 3] [--kinds plain,lean]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import lean_moto
from rig import cpu_seconds

from quiver.devstack import moto_server
from quiver.storage.base import Outgoing
from quiver.storage.sqs_lean import LeanSqsClient

OUTSTANDING = 400
IN_FLIGHT = 300
BATCH = 10
BODY_BYTES = 5000
VISIBILITY = 120
WARMUP_MESSAGES = 200
# A cycle needs about messages / 10 rounds, and a round of plain moto well under a second.
ROUND_LIMIT_PER_MESSAGE = 1
CYCLE_DEADLINE = 600.0

Starter = Callable[[Path], moto_server.MotoServer]


def starter(kind: str) -> Starter:
    def start(log_dir: Path) -> moto_server.MotoServer:
        server, _ = lean_moto.start(log_dir=log_dir, lean=kind == "lean")
        return server

    return start


async def cycle(endpoint: str, queue_url: str, messages: int, tag: str) -> int:
    """Send, receive and delete `messages`; returns the number of SQS calls made."""
    sqs = LeanSqsClient(region=moto_server.REGION,
                        credentials=moto_server.session(endpoint).get_credentials())
    queue = sqs.queue(queue_url)
    filler = "x" * (BODY_BYTES - 40)
    sent = deleted = calls = 0
    held: deque[str] = deque()
    deadline = time.monotonic() + CYCLE_DEADLINE
    try:
        for _ in range(messages * ROUND_LIMIT_PER_MESSAGE + 100):
            if deleted >= messages or time.monotonic() > deadline:
                break
            if sent < messages and sent - deleted <= OUTSTANDING - BATCH:
                n = min(BATCH, messages - sent)
                await queue.send([Outgoing(body=f"{tag}-{sent + i:08d} {filler}")
                                  for i in range(n)])
                sent += n
                calls += 1
            got = await queue.receive(max_messages=BATCH, wait_seconds=0,
                                      visibility=VISIBILITY)
            calls += 1
            held.extend(m.receipt for m in got)
            keep = IN_FLIGHT if sent < messages else 0
            while len(held) > keep:
                receipts = [held.popleft() for _ in range(min(BATCH, len(held)))]
                await queue.delete(receipts)
                deleted += len(receipts)
                calls += 1
    finally:
        await sqs.close()
    if deleted != messages:
        raise RuntimeError(f"cycle {tag}: deleted {deleted} of {messages} (sent {sent})")
    return calls


def measure(start: Starter, messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="quiver-moto-cost-") as tmp:
        server = start(Path(tmp))
        try:
            deployment = moto_server.create_resources(server.endpoint)
            url = deployment.outbound_queue_url
            asyncio.run(cycle(server.endpoint, url, WARMUP_MESSAGES, "warm"))
            cpu0, wall0 = cpu_seconds(server.process.pid), time.monotonic()
            calls = asyncio.run(cycle(server.endpoint, url, messages, "run"))
            cpu = cpu_seconds(server.process.pid) - cpu0
            wall = time.monotonic() - wall0
        finally:
            server.stop()
    return {"moto_cpu_us_per_msg": cpu / messages * 1e6, "moto_cpu_s": cpu,
            "wall_s": wall, "calls": calls}


def main(argv: list[str] | None = None,
         extra: dict[str, Starter] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kinds", default="plain,lean",
                   help="comma-separated, in the order of the first run")
    a = p.parse_args(argv)
    starters = {"plain": starter("plain"), "lean": starter("lean"), **(extra or {})}
    kinds = a.kinds.split(",")
    unknown = [k for k in kinds if k not in starters]
    if unknown or a.messages < 1 or a.runs < 1:
        p.error(f"unknown kinds {unknown}; --messages and --runs must be ≥ 1")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for run in range(a.runs):
        order = kinds if run % 2 == 0 else kinds[::-1]
        for kind in order:
            r = measure(starters[kind], a.messages)
            results[kind].append(r)
            print(f"run {run + 1}/{a.runs} {kind:>8}: moto {r['moto_cpu_us_per_msg']:7.0f} µs/msg, "
                  f"{r['wall_s']:5.1f} s, {r['calls']:.0f} calls", file=sys.stderr, flush=True)
    medians = {k: round(statistics.median(r["moto_cpu_us_per_msg"] for r in rs), 1)
               for k, rs in results.items()}
    print(f"moto CPU µs per message, median of {a.runs} ({a.messages:,} messages each): "
          + ", ".join(f"{k} {v:,.0f}" for k, v in medians.items()), file=sys.stderr)
    print(json.dumps({"messages": a.messages, "runs": a.runs,
                      "moto_cpu_us_per_msg_median": medians,
                      "per_run": {k: [round(r["moto_cpu_us_per_msg"], 1) for r in rs]
                                  for k, rs in results.items()}}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
