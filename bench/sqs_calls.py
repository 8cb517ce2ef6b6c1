"""CPU per SQS call: boto3 (`SqsQueue`) against the lean client (`LeanSqsQueue`).

Both clients make the same calls against moto's server: ReceiveMessage(10),
DeleteMessageBatch(10), ChangeMessageVisibilityBatch(10) and
SendMessageBatch(10) with 2 KB bodies. The figure is this process's CPU time
(`time.process_time`, so boto3's worker threads count too) per call, the median
over several runs of each run's mean; moto runs in its own process and is not
counted. Queues hold about 100 messages (moto slows as a queue grows).

One call at a time, each call also pays for waking the process after its wait
for moto (tens of ms of idle: cold caches, scheduler), for both clients alike;
the "cycle" row runs several workers at once so the process idles less, as in
a loaded sender, and is the better guide to CPU per message.

By default calls go through a keep-alive front in a child process, because
moto's server closes every connection after answering while SQS keeps them
open; `--via direct` measures against moto itself (a reconnect per call for
both clients). Prints a table and one JSON line; never fails on time.

    .venv/bin/python bench/sqs_calls.py [--runs 5] [--calls 20] [--via front|direct]
                                        [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import boto3
from boto3_queue import SqsQueue
from botocore.config import Config

from quiver.devstack.moto_server import (
    FAKE_CREDENTIALS,
    REGION,
    client,
    create_resources,
    start_moto,
)
from quiver.devstack.processes import free_port
from quiver.storage.base import Outgoing, Queue
from quiver.storage.sqs_lean import LeanSqsClient

DEPTH = 100
BATCH = 10
WARMUP = 5
BODY = "x" * 2048
CYCLE = "Cycle"  # receive + delete + send of ten messages, several workers at once
OPS = ("ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch", "SendMessageBatch")
# What each timed call records, and the unit it is shown in.
KINDS = {"cpu_us": 1e6, "wall_ms": 1e3}
# Each run's calls are bounded in count; this bounds a run in time on a slow box.
RUN_DEADLINE = 120.0


# --- the keep-alive front (child process) ------------------------------------


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def _front(upstream_port: int, port: int) -> None:
    async def forward(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        writer.write(request)
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        kept = [x for x in lines[1:] if not x.lower().startswith(b"connection:")]
        status = b"HTTP/1.1 " + lines[0].split(None, 1)[1]
        return b"\r\n".join([status, *kept]) + b"\r\n\r\n" + body

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(head))
                writer.write(await forward(head + body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def start_front(upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-front", str(upstream_port), str(port)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the keep-alive front did not start")


# --- measurement ---------------------------------------------------------------


def fresh_queue(moto_endpoint: str) -> str:
    sqs = client(moto_endpoint, "sqs")
    url: str = sqs.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    for _ in range(DEPTH // BATCH):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": BODY} for i in range(BATCH)])
    return url


async def timed(call: Awaitable[Any]) -> tuple[float, float]:
    """(process CPU, wall) seconds for one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    await call
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure_op(queue: Queue, op: str, calls: int) -> list[tuple[float, ...]]:
    """(cpu, wall) seconds per timed call of `op`; set-up is not timed."""
    samples: list[tuple[float, ...]] = []
    deadline = time.monotonic() + RUN_DEADLINE
    outgoing = [Outgoing(body=BODY) for _ in range(BATCH)]
    for i in range(WARMUP + calls):
        if time.monotonic() > deadline:
            break
        if op == "ReceiveMessage":
            # visibility 0 leaves the queue as it was for the next call.
            sample = await timed(
                queue.receive(max_messages=BATCH, wait_seconds=0, visibility=0))
        elif op == "SendMessageBatch":
            sample = await timed(queue.send(outgoing))
            taken = await queue.receive(max_messages=BATCH, wait_seconds=0, visibility=60)
            await queue.delete([m.receipt for m in taken])
        else:
            taken = await queue.receive(max_messages=BATCH, wait_seconds=0, visibility=60)
            receipts = [m.receipt for m in taken]
            if op == "DeleteMessageBatch":
                sample = await timed(queue.delete(receipts))
                await queue.send(outgoing[:len(receipts)])
            else:
                sample = await timed(queue.change_visibility(receipts, seconds=0))
        if i >= WARMUP:
            samples.append(sample)
    return samples


async def measure_cycles(queue: Queue, *, workers: int, cycles: int) -> tuple[float, ...]:
    """(cpu, wall) seconds per cycle with `workers` cycling at once.

    A cycle is what the sender does for ten messages: receive them, delete them,
    send ten (here back to the same queue, which keeps its depth steady). With
    several at once the event loop (or boto3's thread pool) never idles between
    calls, as in a busy sender, so caches stay warm and no call pays a wake-up.
    """
    outgoing = [Outgoing(body=BODY) for _ in range(BATCH)]
    deadline = time.monotonic() + RUN_DEADLINE
    done = 0

    async def worker() -> None:
        nonlocal done
        for _ in range(cycles):
            if time.monotonic() > deadline:
                return
            taken = await queue.receive(max_messages=BATCH, wait_seconds=0, visibility=60)
            await queue.delete([m.receipt for m in taken])
            await queue.send(outgoing)
            done += 1

    async def all_workers() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    await asyncio.gather(*(worker() for _ in range(workers)))  # warm up: connections, pools
    done = 0
    cpu, wall = await timed(all_workers())
    n = max(done, 1)
    return cpu / n, wall / n


def sign_costs() -> dict[str, float]:
    """µs to sign one 2 KB DeleteMessageBatch body: botocore's SigV4Auth vs ours."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from quiver.storage.sigv4 import SigV4Signer, amz_date

    body = json.dumps({"QueueUrl": "http://127.0.0.1:1/1/q", "Entries": [
        {"Id": str(i), "ReceiptHandle": "r" * 200} for i in range(BATCH)]}).encode()
    creds = Credentials("AKID", "secret", "token")
    n = 2000
    botocore_signer = SigV4Auth(creds, "sqs", REGION)
    start = time.process_time()
    for _ in range(n):
        request = AWSRequest(method="POST", url="http://127.0.0.1:1/", data=body, headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "AmazonSQS.DeleteMessageBatch", "x-amzn-query-mode": "true"})
        botocore_signer.add_auth(request)
    botocore_us = (time.process_time() - start) / n * 1e6
    ours = SigV4Signer(region=REGION, service="sqs")
    start = time.process_time()
    for _ in range(n):
        date = amz_date()
        ours.authorization(access_key="AKID", secret_key="secret", body=body, date=date, headers={
            "content-type": "application/x-amz-json-1.0", "host": "127.0.0.1:1",
            "x-amz-date": date, "x-amz-target": "AmazonSQS.DeleteMessageBatch",
            "x-amzn-query-mode": "true", "x-amz-security-token": "token"})
    ours_us = (time.process_time() - start) / n * 1e6
    return {"botocore_sigv4_us": round(botocore_us, 1), "lean_sigv4_us": round(ours_us, 1)}


async def bench(*, moto_endpoint: str, client_endpoint: str, runs: int, calls: int,
                workers: int) -> dict[str, dict[str, list[float]]]:
    session = boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name=REGION)
    # The sender's boto3 configuration (quiver/wiring.py).
    boto = session.client("sqs", endpoint_url=client_endpoint, config=Config(
        max_pool_connections=32, retries={"mode": "standard", "max_attempts": 5}))
    lean = LeanSqsClient(region=REGION, credentials=session.get_credentials())

    def on_client(url: str) -> str:
        return client_endpoint + "/" + url.split("/", 3)[3]

    makers: dict[str, Callable[[str], Queue]] = {
        "boto3": lambda url: SqsQueue(boto, on_client(url)),
        "lean": lambda url: lean.queue(on_client(url)),
    }
    # results[op][f"{client}_{kind}"] = one mean per run
    results: dict[str, dict[str, list[float]]] = {
        op: {f"{name}_{kind}": [] for name in makers for kind in KINDS} for op in (*OPS, CYCLE)}
    for run in range(runs):
        order = list(makers) if run % 2 == 0 else list(reversed(makers))
        for name in order:
            url = fresh_queue(moto_endpoint)
            queue = makers[name](url)
            for op in OPS:
                samples = await measure_op(queue, op, calls)
                for k, (kind, scale) in enumerate(KINDS.items()):
                    if samples:
                        results[op][f"{name}_{kind}"].append(
                            statistics.fmean(s[k] for s in samples) * scale)
            cycle = await measure_cycles(queue, workers=workers, cycles=max(3, calls // 2))
            for k, (kind, scale) in enumerate(KINDS.items()):
                results[CYCLE][f"{name}_{kind}"].append(cycle[k] * scale)
            client(moto_endpoint, "sqs").delete_queue(QueueUrl=url)
        print(f"run {run + 1}/{runs} done", file=sys.stderr, flush=True)
    await lean.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per op per run")
    parser.add_argument("--workers", type=int, default=8, help="concurrent workers in cycles")
    parser.add_argument("--via", choices=("front", "direct"), default="front")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--serve-front", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_front:
        asyncio.run(_front(*args.serve_front))
        return
    runs, calls = max(1, min(args.runs, 20)), max(1, min(args.calls, 500))
    signing = sign_costs()
    with tempfile.TemporaryDirectory(prefix="quiver-bench-sqs-") as tmp:
        moto = start_moto(log_dir=Path(tmp))
        front = None
        try:
            create_resources(moto.endpoint)
            client_endpoint = moto.endpoint
            if args.via == "front":
                front, port = start_front(int(moto.endpoint.rsplit(":", 1)[1]))
                client_endpoint = f"http://127.0.0.1:{port}"
            coro = bench(moto_endpoint=moto.endpoint, client_endpoint=client_endpoint,
                         runs=runs, calls=calls, workers=max(1, min(args.workers, 9)))
            if args.loop == "uvloop":
                import uvloop

                results = uvloop.run(coro)
            else:
                results = asyncio.run(coro)
        finally:
            if front is not None:
                front.terminate()
                front.wait(timeout=10)
            moto.stop()

    summary: dict[str, dict[str, float]] = {
        op: {key: round(statistics.median(values), 1) for key, values in figures.items() if values}
        for op, figures in results.items()
    }
    print(f"\nCPU per call (median of {runs} runs x {calls} calls; via {args.via}, "
          f"{args.loop}; batches of {BATCH})")
    print(f"{'':<32}{'------- CPU us -------':>28}{'-- wall ms --':>16}")
    print(f"{'call':<32}{'boto3':>10}{'lean':>10}{'ratio':>8}{'boto3':>8}{'lean':>8}")
    for op, s in summary.items():
        label = f"{op}({BATCH})" if op != CYCLE else f"cycle, {args.workers} at once"
        print(f"{label:<32}{s['boto3_cpu_us']:>10.0f}{s['lean_cpu_us']:>10.0f}"
              f"{s['boto3_cpu_us'] / s['lean_cpu_us']:>7.1f}x"
              f"{s['boto3_wall_ms']:>8.1f}{s['lean_wall_ms']:>8.1f}")
    cycle = summary[CYCLE]
    print(f"A cycle is ReceiveMessage + DeleteMessageBatch + SendMessageBatch for {BATCH} "
          f"messages: boto3 {cycle['boto3_cpu_us'] / BATCH:.0f} us, "
          f"lean {cycle['lean_cpu_us'] / BATCH:.0f} us of CPU per message")
    print(f"SigV4 per request: botocore {signing['botocore_sigv4_us']} us, "
          f"lean {signing['lean_sigv4_us']} us")
    print(json.dumps({"bench": "sqs_calls", "via": args.via, "loop": args.loop, "runs": runs,
                      "calls": calls, "batch": BATCH, "cpu_us_per_call": summary,
                      "sign": signing}))


if __name__ == "__main__":
    main()
