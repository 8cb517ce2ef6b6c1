"""Messages per second per connection to a distant MX: the next envelope pipelined behind
the body (`delivery.pipeline_next`) against one transaction at a time.

On loopback a round trip costs nothing, so the end-to-end benchmark cannot show what
a round trip per message is worth. Here the receiving MX (an SMTP responder on
loopback that offers PIPELINING) holds every batch of replies for `--rtt` ms before
writing it, so a reply reaches the sender one emulated round trip after its command.
The sender side is the production scheduler and SMTP client (one source, a static
route, `--connections` connections). Each run submits `--messages` messages at once
and times them to the last reply; the two settings alternate run by run and the
medians are printed, with the round trips per message the MX counted (batches of
replies written, banners excluded). Loopback only, bounded in count and time;
prints figures, never fails on time.

    .venv/bin/python bench/round_trips.py                   # 20 ms, 200 messages, 2 connections
    .venv/bin/python bench/round_trips.py --rtt 50 --messages 100 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from quiver.devstack.samples import render
from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler

DOMAIN = "far.rtt.quiver.test"
EHLO_REPLY = b"250-far.rtt.quiver.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
END_OF_DATA = b"\r\n.\r\n"


@dataclass
class MxCounts:
    messages: int = 0
    batches: int = 0  # reply batches written after the banner: round trips


class DistantMx:
    """An SMTP responder whose every batch of replies waits `rtt` seconds before it goes."""

    def __init__(self, rtt: float) -> None:
        self.rtt = rtt
        self.counts = MxCounts()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        try:
            writer.write(b"220 far.rtt.quiver.test ESMTP\r\n")
            buffer, in_data, done = b"", False, False
            while not done:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
                replies, buffer, in_data, done = self._answer(buffer, in_data)
                if replies:
                    await asyncio.sleep(self.rtt)
                    writer.write(replies)
                    self.counts.batches += 1
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, buffer: bytes, in_data: bool) -> tuple[bytes, bytes, bool, bool]:
        """Replies to every complete command (and body) in `buffer`; what is left."""
        out: list[bytes] = []
        while True:
            if in_data:
                end = buffer.find(END_OF_DATA)
                if end < 0:
                    break
                buffer, in_data = buffer[end + len(END_OF_DATA):], False
                self.counts.messages += 1
                out.append(b"250 2.0.0 queued\r\n")
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            verb = buffer[:4].upper()
            buffer = buffer[line_end + 2:]
            if verb == b"EHLO":
                out.append(EHLO_REPLY)
            elif verb == b"DATA":
                out.append(b"354 go ahead\r\n")
                # The body follows the 354; as sent, it starts on this CRLF's heels.
                buffer, in_data = b"\r\n" + buffer, True
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                return b"".join(out), buffer, False, True
            else:
                out.append(b"250 ok\r\n")
        return b"".join(out), buffer, in_data, False


def policy_text(port: int, connections: int, pipeline_next: bool) -> str:
    return f"""
local_only = true
default_pool = "p"
[delivery]
ehlo = "rtt.quiver.local.test"
port = {port}
verify_tls = false
allow_networks = ["127.0.0.0/8"]
routes = {{ "{DOMAIN}" = "127.0.0.1" }}
pipeline_next = {str(pipeline_next).lower()}
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.rtt.quiver.test"
[pools.p]
sources = ["a"]
[[throttles]]
source = "*"
max_connections = {connections}
max_messages_per_connection = 100000
"""


async def one_run(args: argparse.Namespace, *, pipeline_next: bool) -> dict[str, float]:
    mx = DistantMx(args.rtt / 1000)
    port = await mx.start()
    policy = parse_policy(policy_text(port, args.connections, pipeline_next))
    scheduler = Scheduler(policy=policy, picker=SourcePicker(policy),
                          resolver=MxResolver(routes=dict(policy.delivery.routes)))
    message = render(message_id="rtt", from_addr="hello@news.rtt.quiver.test",
                     to=[f"u@{DOMAIN}"], subject="round trips", size=args.size)
    try:
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(
            scheduler.deliver(pool="p", domain=DOMAIN, sender="b@news.rtt.quiver.test",
                              recipients=[f"u{n}@{DOMAIN}"], message=message)
            for n in range(args.messages))), args.timeout)
        elapsed = time.monotonic() - started
    finally:
        await scheduler.close()
        await mx.stop()
    delivered = sum(1 for attempts in results for a in attempts if a.reply.positive)
    if delivered != args.messages:
        raise RuntimeError(f"{delivered} of {args.messages} delivered")
    # Banner and EHLO are one batch each per connection; QUIT's reply goes after the run.
    setup = 2 * args.connections
    return {
        "msgs_per_s": args.messages / elapsed,
        "msgs_per_s_per_connection": args.messages / elapsed / args.connections,
        "round_trips_per_msg": max(0, mx.counts.batches - setup) / args.messages,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for number in range(args.runs):
        # Alternating, and each order in turn: the machine may be shared and noisy.
        order = ("on", "off") if number % 2 == 0 else ("off", "on")
        for kind in order:
            runs[kind].append(await one_run(args, pipeline_next=kind == "on"))
            r = runs[kind][-1]
            print(f"run {number + 1}/{args.runs} {kind:>3}: {r['msgs_per_s']:,.1f} msg/s, "
                  f"{r['round_trips_per_msg']:.2f} round trips per message", file=sys.stderr)

    def median(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[kind]), 2)

    result: dict[str, Any] = {
        "rtt_ms": args.rtt, "messages": args.messages, "connections": args.connections,
        "runs": args.runs, "message_bytes": args.size,
    }
    for kind in runs:
        for key in ("msgs_per_s", "msgs_per_s_per_connection", "round_trips_per_msg"):
            result[f"{key}_pipeline_next_{kind}"] = median(kind, key)
    result["ratio_on_vs_off"] = round(
        result["msgs_per_s_pipeline_next_on"] / result["msgs_per_s_pipeline_next_off"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rtt", type=float, default=20.0, help="emulated round trip, ms (20)")
    p.add_argument("--messages", type=int, default=200, help="per run (200)")
    p.add_argument("--connections", type=int, default=2, help="max_connections (2)")
    p.add_argument("--runs", type=int, default=3, help="runs of each setting; medians (3)")
    p.add_argument("--size", type=int, default=5000, help="message bytes (5,000)")
    p.add_argument("--timeout", type=float, default=120, help="per run, seconds")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    if not (args.messages >= 1 and args.runs >= 1 and 1 <= args.connections <= 50
            and 0 <= args.rtt <= 1000):
        p.error("need --messages >= 1, --runs >= 1, --connections 1-50, --rtt 0-1000")
    result = asyncio.run(run(args))
    print(f"at {args.rtt:g} ms round trip, {args.connections} connection(s), "
          f"{args.messages} messages, median of {args.runs}: "
          f"pipeline_next on {result['msgs_per_s_pipeline_next_on']:,.1f} msg/s "
          f"({result['round_trips_per_msg_pipeline_next_on']:.2f} round trips/msg), "
          f"off {result['msgs_per_s_pipeline_next_off']:,.1f} msg/s "
          f"({result['round_trips_per_msg_pipeline_next_off']:.2f}); "
          f"ratio {result['ratio_on_vs_off']:.2f}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
