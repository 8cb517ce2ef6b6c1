"""The least CPU a sender written in Python spends per message, beside the sender's own.

The floor does only what no sender can skip, with none of Quiver's checks, and in
the cheapest form Python offers:

- the queue message: the SQS body parsed by orjson and its message decoded by
  pybase64, the C libraries the sender uses (the same bodies as
  bench/sender_cpu.py), without the sender's checks that the answers are the
  standard library's;
- DKIM without the private-key operation: the header/body split, the relaxed
  body (C-level `replace` passes), its SHA-256, the relaxed signed header fields
  and the signature field's text;
- SMTP: one pipelined MAIL/RCPT/DATA and the body on a kept connection to
  `smtp-sink` on loopback, replies read by an `asyncio.Protocol` (no streams);
- one event: orjson's serialisation of a delivered event's fields.

It skips what the sender does besides: validating the envelope, content checks,
the scheduler's limits and connection choice, DSN classification, completion
and SQS deletes, the per-message task, and signing in a worker process.

Runs alternate between the floor and bench/sender_cpu.py's production engine, in
this process and on the same `smtp-sink`, with one RSA-2048 signature timed
beside each. It prints, as medians: the floor's CPU per message, the sender's
without its RSA signature, each against the signature (issue 16's
`overhead_per_rsa_sign` asks ≤ 0.6 of the sender), and the sender against the
floor. Prints figures, never fails on time.

    .venv/bin/python bench/python_floor.py                      # 3,000 messages, 3 rounds
    .venv/bin/python bench/python_floor.py --messages 2000 --rounds 5 --json
    .venv/bin/python bench/python_floor.py --signing-threads 0   # the sender signs inline too
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pybase64
import sender_cpu
from rig import (
    add_signing_options,
    check_signing_options,
    rsa_path,
    rsa_sign_us,
    start_sink,
)

from quiver.devstack.processes import free_port
from quiver.dkim import DkimSigner, generate_private_key
from quiver.sender.collector import tune_collector

SIGNED = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
          b"content-type", b"list-unsubscribe")


class Replies(asyncio.Protocol):
    """An SMTP client connection reduced to waiting for a number of final replies."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buffer = b""
        self.lines: list[bytes] = []  # final reply lines not yet taken
        self.wanted = 0
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n")) >= 0:
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            if line[3:4] != b"-":  # a final line (not a continuation)
                self.lines.append(line)
        if self.done is not None and len(self.lines) >= self.wanted:
            self.done.set_result(None)
            self.done = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None:
            self.done.set_exception(ConnectionError("smtp-sink closed the connection"))
            self.done = None

    async def exchange(self, data: bytes, replies: int) -> list[bytes]:
        assert self.transport is not None
        if data:
            self.transport.write(data)
        if len(self.lines) < replies:
            self.wanted = replies
            self.done = asyncio.get_running_loop().create_future()
            await self.done
        taken, self.lines = self.lines[:replies], self.lines[replies:]
        return taken


def dkim_without_rsa(message: bytes, stamp: int) -> tuple[bytes, str]:
    """The data the private key would sign and the field's text before b=."""
    end = message.find(b"\r\n\r\n")
    head, body = message[:end], message[end + 4:]
    body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n").rstrip(b"\r\n") + b"\r\n"
    body_hash = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    fields: dict[bytes, bytes] = {}
    for line in head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in SIGNED:
            fields[name] = value
    hashed = [name + b":" + b" ".join(value.split()) + b"\r\n"
              for name in SIGNED if (value := fields.get(name)) is not None]
    text = (f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={sender_cpu.FROM_DOMAIN};"
            f" s=c1; t={stamp}; h={':'.join(n.decode() for n in SIGNED if n in fields)};"
            f" bh={body_hash}; b=")
    hashed.append(b"dkim-signature:" + b" ".join(text.encode("ascii").split(b":", 1)[1].split()))
    return b"".join(hashed), text


async def floor_run(bodies: list[str], port: int, connections: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for delivering `bodies` the floor's way."""
    loop = asyncio.get_running_loop()
    work = deque(bodies)
    events: list[bytes] = []
    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(Replies, "127.0.0.1", port)
        await protocol.exchange(b"", 1)  # the greeting
        await protocol.exchange(b"EHLO floor.quiver.test\r\n", 1)
        protocols.append(protocol)

    async def deliver(smtp: Replies) -> None:
        while work:
            data = orjson.loads(work.popleft())
            message = pybase64.b64decode(data["raw"])
            _, text = dkim_without_rsa(message, int(time.time()))
            payload = (text + "x" * 344 + "\r\n").encode("ascii") + message.replace(
                b"\r\n.", b"\r\n..")
            rcpt = data["to"][0]
            replies = await smtp.exchange(
                f"MAIL FROM:<{data['from']}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(), 3)
            if not replies[2].startswith(b"354"):
                raise RuntimeError(f"smtp-sink refused: {replies!r}")
            final = await smtp.exchange(payload + b"\r\n.\r\n", 1)
            events.append(orjson.dumps({
                "v": 1, "type": "delivered", "message_id": data["id"], "rcpt": rcpt,
                "at": time.time(), "response": final[0].decode("ascii", "replace"),
                "mx": "127.0.0.1", "source_ip": "127.0.0.1", "attempt": 1,
                "campaign": data.get("campaign"), "message_size": len(payload),
            }))

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(deliver(p) for p in protocols))
    cpu1, wall1 = time.process_time(), time.monotonic()
    for protocol in protocols:
        await protocol.exchange(b"QUIT\r\n", 1)
        assert protocol.transport is not None
        protocol.transport.close()
    if len(events) != len(bodies):
        raise RuntimeError(f"the floor delivered {len(events)} of {len(bodies)}")
    return cpu1 - cpu0, wall1 - wall0


def sender_args(messages: int, *, processes: int | None, threads: int | None
                ) -> argparse.Namespace:
    """bench/sender_cpu.py's defaults: one recipient, RSA-2048, the policy's signing
    workers unless `processes` or `threads` say otherwise."""
    return argparse.Namespace(
        messages=messages, runs=1, timeout=600, signing_processes=processes,
        signing_threads=threads, recipients=1,
        return_path=None, unsubscribe=False, adaptive="off", collector="tuned",
        moto_endpoint="")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000, help="per run (default 3,000)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of floor then sender; medians (default 3)")
    p.add_argument("--connections", type=int, default=8, help="the floor's (default 8)")
    add_signing_options(p)
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    if args.messages < 100 or args.rounds < 1 or not 1 <= args.connections <= 64:
        p.error("--messages >= 100, --rounds >= 1, --connections 1-64")
    check_signing_options(p, args)
    try:
        import uvloop
        run: Callable[[Any], Any] = uvloop.run
    except ImportError:  # as the sender: uvloop when installed
        run = asyncio.run
    key = DkimSigner.from_pem(domain=sender_cpu.FROM_DOMAIN, selector="c1",
                              algorithm="rsa-sha256", pem=generate_private_key("rsa-sha256"))
    rows: list[dict[str, float]] = []
    workers_used: set[tuple[int, int]] = set()  # (processes, threads), as the sender said
    with tempfile.TemporaryDirectory(prefix="quiver-floor-") as tmp:
        sink = start_sink(work_dir=Path(tmp), port=free_port())
        try:
            tune_collector()  # as the sender runs (and sender_cpu's run does too)
            run(floor_run(sender_cpu.bodies(300, "w"), sink.port, args.connections))  # warm-up
            for number in range(1, args.rounds + 1):
                bodies = sender_cpu.bodies(args.messages, f"f{number}")
                cpu_s, wall_s = run(floor_run(bodies, sink.port, args.connections))
                floor_rsa = rsa_sign_us(key.key_sign)
                result = run(sender_cpu.run(sender_args(
                    args.messages, processes=args.signing_processes,
                    threads=args.signing_threads), sink.port))
                workers_used.add((result["signing_processes"], result["signing_threads"]))
                row = {
                    "floor_us_per_msg": cpu_s / args.messages * 1e6,
                    "floor_msgs_per_s": args.messages / wall_s,
                    "rsa_sign_us": statistics.median([floor_rsa, result["rsa_sign_us"]]),
                    "sender_us_per_msg": result["sender_cpu_us_per_msg"],
                }
                row["sender_us_without_rsa"] = row["sender_us_per_msg"] - row["rsa_sign_us"]
                rows.append(row)
                print(f"round {number}/{args.rounds}: floor {row['floor_us_per_msg']:,.0f} µs/msg,"
                      f" sender {row['sender_us_per_msg']:,.0f} µs/msg,"
                      f" RSA {row['rsa_sign_us']:,.0f} µs", file=sys.stderr)
        finally:
            sink.stop()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def ratios(top: str, bottom: str) -> list[float]:
        return [round(r[top] / r[bottom], 3) for r in rows]

    out = {
        "messages": args.messages, "rounds": args.rounds, "connections": args.connections,
        # Where the sender signed (both 0: on its event loop), as it reported it.
        "signing_processes": next(iter(workers_used))[0],
        "signing_threads": next(iter(workers_used))[1],
        "floor_us_per_msg": round(median("floor_us_per_msg"), 1),
        "floor_msgs_per_s": round(median("floor_msgs_per_s"), 1),
        "sender_us_per_msg": round(median("sender_us_per_msg"), 1),
        "sender_us_without_rsa": round(median("sender_us_without_rsa"), 1),
        "rsa_sign_us": round(median("rsa_sign_us"), 1),
        "rsa_path": rsa_path(),
        # Medians of each round's ratio: both sides of a ratio come from one round.
        "floor_per_rsa_sign": statistics.median(ratios("floor_us_per_msg", "rsa_sign_us")),
        "sender_overhead_per_rsa_sign": statistics.median(
            ratios("sender_us_without_rsa", "rsa_sign_us")),
        "sender_without_rsa_per_floor": statistics.median(
            ratios("sender_us_without_rsa", "floor_us_per_msg")),
        "per_round": [{k: round(v, 1) for k, v in r.items()} for r in rows],
    }
    print(f"floor {out['floor_us_per_msg']:,.0f} µs/msg = {out['floor_per_rsa_sign']:.2f} RSA "
          f"signatures; sender without RSA {out['sender_us_without_rsa']:,.0f} µs/msg = "
          f"{out['sender_overhead_per_rsa_sign']:.2f} signatures = "
          f"{out['sender_without_rsa_per_floor']:.2f} times the floor "
          f"(RSA-2048 {out['rsa_sign_us']:,.0f} µs, OpenSSL's {out['rsa_path']} path; "
          f"medians of {args.rounds} rounds "
          f"of {args.messages:,})", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
