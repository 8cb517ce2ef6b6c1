"""The sender's own CPU per message, without SQS: the engine in this process, the sink apart.

Intake, lifecycle, DKIM (RSA-2048), scheduler, SMTP sessions, event packing and
completion are the production code; the outbound queue is an in-process list of
pre-encoded SQS bodies handed out ten at a time (as ReceiveMessage would), and
the events queue only counts what it is sent, so no emulated SQS shares the
cores or the measurement. Deliveries go to Postfix's `smtp-sink` on loopback.

Per run it prints the process's CPU per message (user + system, every thread)
from the first receive to the last completion, and, measured in the same
process between runs: one RSA-2048 signature and one whole DKIM signature, so
the figure can be read as "RSA + everything else". Medians of several runs.
Prints figures, never fails on time.

    .venv/bin/python bench/sender_cpu.py                     # 5,000 messages, 5 runs
    .venv/bin/python bench/sender_cpu.py --messages 2000 --runs 3 --json
    .venv/bin/python bench/sender_cpu.py --recipients 3 --return-path   # signed VERP
    .venv/bin/python bench/sender_cpu.py --recipients 3 --unsubscribe   # RFC 8058 headers
    .venv/bin/python bench/sender_cpu.py --adaptive on --json            # the engine's cost

`--return-path` turns on policy `return_path` for the From domain: a signed MAIL
FROM per recipient and one transaction each, the tokens' references stored in
the in-memory store; `--return-path dynamo` stores them as production does, in
DynamoDB (moto's server, started here; its own CPU is not counted, the boto3
client's is).

`--adaptive on` runs the adaptive engine (quiver/adaptive) as the sender does: it
sees every delivery's attempts and matches the refusals against the rules of the
destination's provider (the sink is made provider "google", with the four starter
rules for it). `--adaptive off` (the default) runs the same policy with `[adaptive]
enabled = false`; compare the two for the engine's cost per message.

`--unsubscribe` turns on policy `unsubscribe` for the From domain: List-Unsubscribe
and List-Unsubscribe-Post with a signed token per recipient, added before DKIM
signing. A message of several recipients then becomes one signed copy and one
transaction per recipient; compare with and without it at --recipients 1 and 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig import (
    add_signing_options,
    check_signing_options,
    cpu_seconds,
    cpu_us_per_call,
    rsa_path,
    rsa_sign_us,
    start_sink,
)

from quiver.adaptive.change import ChangeRecorder
from quiver.adaptive.engine import AdaptiveEngine
from quiver.bounce import default_classifier
from quiver.devstack.moto_server import client as moto_client
from quiver.devstack.moto_server import start_moto
from quiver.devstack.processes import free_port
from quiver.devstack.samples import render
from quiver.dkim import DkimSigner, SignerSet, generate_private_key
from quiver.dkim.pool import Signing, signing_for
from quiver.dkim.processes import ProcessSigningPool
from quiver.envelope import Envelope, encode
from quiver.policy import parse_policy
from quiver.returnpath import ReturnPaths, rotated
from quiver.routing.mx import MxResolver
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.sender.collector import tune_collector
from quiver.sender.complete import Completer
from quiver.sender.engine import Sender
from quiver.sender.lifecycle import MessageHandler
from quiver.storage.aws import SqsEventSink
from quiver.storage.base import Outgoing, Received, ReturnPathStore
from quiver.storage.dynamo import DynamoReturnPaths
from quiver.storage.memory import MemoryBodyStore, MemoryReturnPaths
from quiver.unsubscribe.headers import UnsubscribeHeaders

FROM_DOMAIN = "news.cpu.quiver.test"
RCPT_DOMAIN = "sink.cpu.quiver.test"
MESSAGE_BYTES = 5000
WARMUP = 300

POLICY = """
local_only = true
default_pool = "p"
[delivery]
ehlo = "cpu.quiver.local.test"
port = {port}
verify_tls = false
allow_networks = ["127.0.0.0/8"]
routes = {{ "{rcpt_domain}" = "127.0.0.1" }}
[intake]
receivers = 4
max_inflight_messages = 300
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.cpu.quiver.test"
[sources.b]
ip = "127.0.0.3"
local_ip = "127.0.0.3"
ehlo = "b.cpu.quiver.test"
[pools.p]
sources = ["a", "b"]
[[throttles]]
source = "*"
max_connections = 12
max_messages_per_connection = 1000
[providers]
google = ["127.0.0.1"]
[adaptive]
enabled = {adaptive}
"""
RETURN_PATH = """
[return_path]
key_file = "in-memory"
[[return_path.domains]]
from = "{from_domain}"
bounce = "bounces.{from_domain}"
"""


_OWN_UNSUBSCRIBE = re.compile(rb"^List-Unsubscribe:[^\r\n]*\r?\n", re.MULTILINE)
UNSUBSCRIBE = """
[[unsubscribe.domains]]
from = "{from_domain}"
url = "https://unsubscribe.{from_domain}/u/"
mailto = "unsubscribe@bounces.{from_domain}"
"""


class ListQueue:
    """The outbound queue: pre-encoded bodies, ten per receive, O(1) per message."""

    def __init__(self) -> None:
        self.pending: deque[Received] = deque()
        self.deleted = 0
        self.resent = 0

    def load(self, bodies: Sequence[str], prefix: str) -> None:
        now = time.time()
        for i, body in enumerate(bodies):
            self.pending.append(Received(body=body, receipt=f"{prefix}r{i}",
                                         message_id=f"{prefix}m{i}", sent_at=now))

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility: int
                      ) -> list[Received]:
        if not self.pending:
            await asyncio.sleep(0.01)
            return []
        out = []
        while self.pending and len(out) < max_messages:
            out.append(self.pending.popleft())
        return out

    async def delete(self, receipts: Sequence[str]) -> None:
        self.deleted += len(receipts)

    async def change_visibility(self, receipts: Sequence[str], *, seconds: int) -> None:
        return None

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.resent += len(messages)


def bodies(count: int, prefix: str, recipients: int = 1, *,
           own_unsubscribe: bool = True) -> list[str]:
    out = []
    for i in range(count):
        to = [f"user{i}-{n}@{RCPT_DOMAIN}" for n in range(recipients)]
        raw = render(message_id=f"{prefix}-{i}", from_addr=f"hello@{FROM_DOMAIN}", to=to,
                     subject=f"CPU benchmark {i}", size=MESSAGE_BYTES)
        if not own_unsubscribe:
            # The sample carries a List-Unsubscribe of its own, which the sender keeps.
            raw = _OWN_UNSUBSCRIBE.sub(b"", raw, count=1)
        out.append(encode(Envelope(id=f"{prefix}-{i}", sender=f"bounces@{FROM_DOMAIN}",
                                   recipients=tuple(to), raw=raw, campaign="bench")))
    return out


def moto_table(endpoint: str) -> Any:
    ddb = moto_client(endpoint, "dynamodb")
    ddb.create_table(
        TableName="finals",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST")
    return ddb


def cpu(signing: Signing | None = None) -> float:
    """Every thread of this process, at the clock's full resolution (os.times ticks at
    10 ms), and the signing worker processes: those running, and those reaped."""
    total = time.process_time()
    if isinstance(signing, ProcessSigningPool):
        total += sum(cpu_seconds(pid) for pid in signing.pids)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += reaped.ru_utime + reaped.ru_stime
    return total


async def run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    text = POLICY.format(port=port, rcpt_domain=RCPT_DOMAIN,
                         adaptive="true" if args.adaptive == "on" else "false")
    if args.return_path:
        text += RETURN_PATH.format(from_domain=FROM_DOMAIN)
    elif args.unsubscribe:
        text += '[return_path]\nkey_file = "in-memory"\n'
    if args.unsubscribe:
        text += UNSUBSCRIBE.format(from_domain=FROM_DOMAIN)
    policy = parse_policy(text)
    pem = generate_private_key("rsa-sha256")
    signer = DkimSigner.from_pem(domain=FROM_DOMAIN, selector="c1", algorithm="rsa-sha256",
                                 pem=pem)
    queue, events = ListQueue(), ListQueue()
    completer = Completer(queue=queue, dlq=ListQueue(), sink=SqsEventSink(events))
    scheduler = Scheduler(policy=policy, resolver=MxResolver(routes=dict(policy.delivery.routes)),
                          picker=SourcePicker(policy))
    # As wiring builds it; with the engine off (the policy says so) it returns at once.
    engine = AdaptiveEngine(policy=scheduler.policy, recorder=ChangeRecorder(None),
                            static_max=scheduler.static_rate, apply_rate=scheduler.adapt)
    scheduler.observe = engine.observe
    # As the sender runs it: private-key operations where delivery.signing_processes
    # and delivery.signing_threads say, unless the command line says otherwise.
    processes, threads = policy.delivery.signing_processes, policy.delivery.signing_threads
    if args.signing_processes is not None or args.signing_threads is not None:
        processes, threads = args.signing_processes or 0, args.signing_threads or 0
    signing = signing_for(processes=processes, threads=threads)
    store: ReturnPathStore | None = None
    if args.return_path == "dynamo":
        store = DynamoReturnPaths(moto_table(args.moto_endpoint), "finals")
    elif args.return_path:
        store = MemoryReturnPaths()
    handler = MessageHandler(policy=policy, transport=scheduler, signers=SignerSet([signer]),
                             bodies=MemoryBodyStore(), completer=completer,
                             classifier=default_classifier(), rng=random.Random(1),
                             signing=signing,
                             return_paths=ReturnPaths(rotated(None, now=time.time() - 60))
                             if args.return_path else None,
                             return_path_store=store,
                             unsubscribe=UnsubscribeHeaders(rotated(None, now=time.time() - 60))
                             if args.unsubscribe else None)
    sender = Sender(intake=policy.intake, queue=queue, handler=handler, completer=completer)
    if args.collector == "tuned":
        tune_collector()  # as `quiver sender` does once it is built
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    sample = render(message_id="s", from_addr=f"hello@{FROM_DOMAIN}", to=["u@x.test"],
                    subject="sample", size=MESSAGE_BYTES)
    runs: list[dict[str, float]] = []
    deadline = time.monotonic() + args.timeout
    try:
        for number in range(args.runs + 1):
            count = WARMUP if number == 0 else args.messages
            prepared = bodies(count, f"r{number}", args.recipients,
                              own_unsubscribe=not args.unsubscribe)
            target = sender.stats.completed + count
            main0, cpu0, wall0 = time.process_time(), cpu(signing), time.monotonic()
            queue.load(prepared, f"r{number}")
            while sender.stats.completed < target and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            main1, cpu1, wall1 = time.process_time(), cpu(signing), time.monotonic()
            if sender.stats.completed < target:
                raise RuntimeError(f"run {number}: {sender.stats} after {args.timeout} s")
            if number == 0:
                continue  # warm-up: connections opened, caches filled
            runs.append({
                "cpu_us_per_msg": (cpu1 - cpu0) / count * 1e6,
                # This process alone: everything but what the signing workers do.
                "main_us_per_msg": (main1 - main0) / count * 1e6,
                "msgs_per_s": count / (wall1 - wall0),
                "rsa_us": rsa_sign_us(signer.key_sign),
                "dkim_us": cpu_us_per_call(lambda: signer.sign(sample), 200),
            })
            print(f"run {number}/{args.runs}: {runs[-1]['cpu_us_per_msg']:,.0f} µs/msg, "
                  f"{runs[-1]['msgs_per_s']:,.0f} msg/s (RSA {runs[-1]['rsa_us']:,.0f} µs)",
                  file=sys.stderr)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        if signing is not None:
            await signing.aclose()

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    total, rsa_us, dkim_us = median("cpu_us_per_msg"), median("rsa_us"), median("dkim_us")
    return {
        "messages": args.messages, "runs": args.runs, "message_bytes": MESSAGE_BYTES,
        "recipients": args.recipients, "return_path": args.return_path,
        "unsubscribe": args.unsubscribe, "adaptive": args.adaptive,
        "adaptive_rules_matched": engine.fired,
        "sender_cpu_us_per_msg": total,
        "rsa_sign_us": rsa_us,
        "rsa_path": rsa_path(),
        "dkim_sign_us": dkim_us,
        "sender_cpu_us_per_msg_without_rsa": round(total - rsa_us, 1),
        "sender_cpu_us_per_msg_without_dkim": round(total - dkim_us, 1),
        # Measured, not a difference of two noisy medians: the event loop's process,
        # the signing worker processes' CPU left out (with --signing-threads or inline
        # signing, the signatures are this process's and count here).
        "main_process_cpu_us_per_msg": median("main_us_per_msg"),
        "msgs_per_s": median("msgs_per_s"),
        "signing_processes": processes,
        "signing_threads": threads,
        "collector": args.collector,
        "event_batches_sent": events.resent,
        "per_run": [{k: round(v, 1) for k, v in r.items()} for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=5000, help="per run (default 5,000)")
    p.add_argument("--runs", type=int, default=5, help="runs; medians (default 5)")
    p.add_argument("--timeout", type=float, default=600, help="for all runs together")
    add_signing_options(p)
    p.add_argument("--recipients", type=int, default=1, help="per message (default 1)")
    p.add_argument("--return-path", nargs="?", const="memory", choices=["memory", "dynamo"],
                   help="signed VERP: a MAIL FROM and a transaction per recipient, the "
                        "references stored in memory (default) or DynamoDB on moto")
    p.add_argument("--unsubscribe", action="store_true",
                   help="one-click unsubscribe headers, a signed copy per recipient")
    p.add_argument("--adaptive", choices=["on", "off"], default="off",
                   help="run the adaptive engine on every delivery (default off)")
    p.add_argument("--collector", choices=["tuned", "default"], default="tuned",
                   help="the sender's garbage-collector tuning, or CPython's defaults")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or not 1 <= args.recipients <= 100:
        p.error("--messages and --runs must be >= 1, --recipients 1-100")
    check_signing_options(p, args)
    try:
        import uvloop
    except ImportError:  # the sender runs on uvloop when it is installed; so does this
        uvloop = None
    with tempfile.TemporaryDirectory(prefix="quiver-cpu-") as tmp:
        sink = start_sink(work_dir=Path(tmp), port=free_port())
        moto = start_moto(log_dir=Path(tmp)) if args.return_path == "dynamo" else None
        args.moto_endpoint = moto.endpoint if moto is not None else ""
        try:
            coro = run(args, sink.port)
            result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
        finally:
            sink.stop()
            if moto is not None:
                moto.stop()
    print(f"sender CPU per message: {result['sender_cpu_us_per_msg']:,.0f} µs "
          f"(RSA-2048 signature alone {result['rsa_sign_us']:,.0f} µs on OpenSSL's "
          f"{result['rsa_path']} path, whole DKIM signature "
          f"{result['dkim_sign_us']:,.0f} µs; everything else "
          f"{result['sender_cpu_us_per_msg_without_dkim']:,.0f} µs); "
          f"{result['msgs_per_s']:,.0f} msg/s, median of {result['runs']} runs "
          f"of {result['messages']:,}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
