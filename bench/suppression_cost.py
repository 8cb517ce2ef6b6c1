"""What the suppression check costs the sender per message.

Three figures, each the CPU of this process (every thread) per message:
- `engine_miss_us`: SuppressionCheck on answers not cached (the in-memory store, so
  only the engine's own work: cache probes, coalescing, caching the answers), for
  receive batches of `--batch` single-recipient messages handled concurrently;
- `engine_hit_us`: the same messages again, every answer cached;
- `<client>_us_per_lookup_<n>`: one coalesced lookup through DynamoSuppression
  (a BatchGetItem of n addresses x 2 scopes, n = `--batch` and 50, the most one
  lookup carries) against moto's server on loopback, with boto3 and with the
  lean client the sender uses: the client side only (moto runs in its own
  process). Per single-recipient message that is the figure / n. moto is the
  benchmarks' (bench/lean_moto.py): its connections are kept alive, as
  DynamoDB's are, so a lookup is not charged a TCP connection that production's
  kept pool does not make (moto as shipped closes every connection, which put
  about 0.3 ms of CPU per lookup on the lean client); the run prints how many
  connections each client opened.
And `cache_bytes_per_entry`: memory of the cache per cached answer (tracemalloc).
Prints figures, never fails on time.

    .venv/bin/python bench/suppression_cost.py
    .venv/bin/python bench/suppression_cost.py --messages 20000 --batch 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import lean_moto
from botocore.credentials import Credentials

from quiver.devstack.moto_server import (
    FAKE_CREDENTIALS,
    REGION,
    client,
    create_resources,
)
from quiver.policy import parse_policy
from quiver.policy.handle import PolicyHandle
from quiver.storage.base import Suppression
from quiver.storage.dynamo import DynamoSuppression
from quiver.storage.dynamo_lean import LeanDynamoClient
from quiver.storage.memory import MemorySuppression
from quiver.suppression import SuppressionCheck
from quiver.suppression.check import BATCH_ADDRESSES

WARM_UP = 20  # lookups before the timed ones, per client and size

POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[suppression]
cache_entries = 1000000
"""


async def engine(messages: int, batch: int) -> tuple[float, float]:
    store = MemorySuppression()
    # One in a hundred recipients listed, as a mature list meets a campaign.
    await store.put_many([Suppression(address=f"u{i}@x.test", reason="manual", created_at=0)
                          for i in range(0, messages, 100)])
    # No window: the engine's own CPU, not the timer's wait.
    check = SuppressionCheck(store, policy=PolicyHandle(parse_policy(POLICY)), window=0)

    async def pass_over() -> float:
        start = time.process_time()
        for first in range(0, messages, batch):
            await asyncio.gather(*(check.check([f"u{i}@x.test"], tenant="t1")
                                   for i in range(first, min(messages, first + batch))))
        return (time.process_time() - start) / messages * 1e6

    miss = await pass_over()
    hit = await pass_over()
    return miss, hit


async def boto(lookups: int, sizes: list[int],
               ) -> tuple[dict[tuple[str, int], tuple[float, float]], int]:
    """(CPU µs, wall ms) per lookup of n addresses, by (client, n) for each n in `sizes`;
    and the connections the lean client opened for all of its lookups."""
    out: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server, _calls = lean_moto.start(log_dir=Path(tmp), lean=True)
        try:
            deployment = create_resources(server.endpoint)
            ddb = client(server.endpoint, "dynamodb")
            lean = LeanDynamoClient(endpoint_url=server.endpoint, region=REGION,
                                    credentials=Credentials(
                                        FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                        FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]))
            stores = {"boto3": DynamoSuppression(ddb, deployment.suppression_table),
                      "lean": DynamoSuppression(ddb, deployment.suppression_table, lean=lean)}
            for (name, store), size in itertools.product(stores.items(), sizes):
                addresses = [f"b{i}@x.test" for i in range(size)]
                await store.put(Suppression(address=addresses[0], reason="manual",
                                            created_at=0))
                for _ in range(WARM_UP):  # warm the connection pool and boto3's caches
                    await store.lookup(addresses, tenant="t1")
                start, wall = time.process_time(), time.perf_counter()
                for _ in range(lookups):
                    await store.lookup(addresses, tenant="t1")
                out[(name, size)] = ((time.process_time() - start) / lookups * 1e6,
                                     (time.perf_counter() - wall) / lookups * 1e3)
            opened = lean.connections_opened
            await lean.close()
        finally:
            server.stop()
    return out, opened


def cache_bytes(entries: int) -> float:
    check = SuppressionCheck(MemorySuppression(), policy=PolicyHandle(parse_policy(POLICY)))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(entries):
        check.cache.store("tenant-a", f"user{i:07d}@example-mail.test", None, now=0.0,
                          max_entries=entries * 2)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(check.cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20_000, help="per engine pass")
    p.add_argument("--batch", type=int, default=10,
                   help="messages handled together (a receive batch; default 10)")
    p.add_argument("--lookups", type=int, default=300, help="boto3 lookups timed")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args()
    miss, hit = asyncio.run(engine(args.messages, args.batch))
    sizes = sorted({args.batch, BATCH_ADDRESSES})
    lookups, opened = asyncio.run(boto(args.lookups, sizes))
    result: dict[str, Any] = {
        "engine_miss_us": round(miss, 1), "engine_hit_us": round(hit, 1),
        "cache_bytes_per_entry": round(cache_bytes(50_000)), "batch": args.batch,
        "lean_connections_opened": opened,
    }
    print(f"engine, answers not cached: {miss:.1f} µs/message")
    print(f"engine, answers cached:     {hit:.1f} µs/message")
    for (name, size), (cpu, ms) in lookups.items():
        result[f"{name}_us_per_lookup_{size}"] = round(cpu, 1)
        result[f"{name}_lookup_ms_{size}"] = round(ms, 2)
        print(f"{name} BatchGetItem ({size} addresses x 2 scopes): {cpu:.0f} µs CPU, "
              f"{ms:.2f} ms wall on loopback moto; {cpu / size:.0f} µs per message")
    print(f"lean client: {opened} connections opened for "
          f"{(args.lookups + WARM_UP) * len(sizes)} lookups")
    print(f"cache: {result['cache_bytes_per_entry']} bytes per cached answer")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
