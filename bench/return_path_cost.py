"""What signed return paths cost per recipient, beside the sender's transactions.

Prints, in this process's CPU: making one return path (token and record), verifying
one (HMAC and an in-memory lookup), and the boto3 client's CPU for the store's
BatchWriteItem against moto's server (one record alone, 25 in one put, and 25
messages of one recipient each putting at once, which the store gathers into one
call) and for the intake's GetItem. moto's own CPU is not counted: DynamoDB is a service. The
sender's CPU with and without return paths is `bench/sender_cpu.py --return-path`.
Prints figures, never fails on time.

    .venv/bin/python bench/return_path_cost.py [--calls 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path

from quiver.devstack.moto_server import client, start_moto
from quiver.returnpath import ReturnPaths, ReturnPathVerifier, rotated
from quiver.storage.base import ReturnPathRecord
from quiver.storage.dynamo import DynamoReturnPaths
from quiver.storage.memory import MemoryReturnPaths

BOUNCE = "bounces.example.com"


def cpu_us(fn, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def run(calls: int) -> dict[str, float]:
    paths = ReturnPaths(rotated(None, now=time.time() - 60))

    def make(i: int = 0) -> tuple[str, ReturnPathRecord]:
        return paths.address(bounce_domain=BOUNCE, message_id=f"msg-{i:016d}",
                             recipient=f"someone.{i}@example.org", tenant="acme",
                             campaign="december")

    n = 20_000
    make_us = timeit.timeit(make, number=n) / n * 1e6
    memory = MemoryReturnPaths()
    address, record = make()
    asyncio.run(memory.put([record]))
    verifier = ReturnPathVerifier(keys=paths.ring, store=memory, bounce_domains={BOUNCE: None})
    verify_us = timeit.timeit(lambda: verifier.verify(address), number=n) / n * 1e6
    with tempfile.TemporaryDirectory(prefix="quiver-rp-") as tmp:
        server = start_moto(log_dir=Path(tmp))
        try:
            ddb = client(server.endpoint, "dynamodb")
            ddb.create_table(
                TableName="finals",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST")
            store = DynamoReturnPaths(ddb, "finals")
            one = [make(1)[1]]
            batch = [make(i)[1] for i in range(25)]

            async def puts(records: list[ReturnPathRecord], count: int) -> float:
                await store.put(records)  # warm the connection
                start = time.process_time()
                for _ in range(count):
                    await store.put(records)
                return (time.process_time() - start) / count * 1e6

            async def concurrent(count: int) -> float:
                # 25 messages of one recipient each, in flight together: one call.
                await asyncio.gather(*(store.put([r]) for r in batch))
                start = time.process_time()
                for _ in range(count):
                    await asyncio.gather(*(store.put([r]) for r in batch))
                return (time.process_time() - start) / count * 1e6

            put1 = asyncio.run(puts(one, calls))
            put25 = asyncio.run(puts(batch, max(1, calls // 5)))
            shared = asyncio.run(concurrent(max(1, calls // 5)))
            get_us = cpu_us(lambda: store.get(one[0].reference), calls)
        finally:
            server.stop()
    return {"make_us": round(make_us, 1), "verify_memory_us": round(verify_us, 1),
            "batch_write_1_client_us": round(put1), "batch_write_25_client_us": round(put25),
            "batch_write_25_client_us_per_recipient": round(put25 / 25, 1),
            "coalesced_25_messages_client_us_per_recipient": round(shared / 25, 1),
            "get_item_client_us": round(get_us)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=300, help="DynamoDB calls per figure")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)
    result = run(max(1, args.calls))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
