"""What IP warm-up costs the source picker per delivery.

Figures (CPU of this process per pick, median of `--runs` runs of `--picks` picks):
- `plain_us_per_pick`: a pool of two warm sources, no warm-up gate (the picker as
  senders run it when no source is warming);
- `warming_us_per_pick`: the same pool with one source warming, its cap large enough
  never to run out: its picks spend blocks reserved from the in-memory store;
- `capped_us_per_pick`: the warming source's cap used up, so each of its turns is
  passed over for the other source;
- `ratio_warming` / `ratio_capped`: those over the plain figure;
- `dynamo_reserve_ms_p50` / `_p90`: wall time of one reservation through DynamoWarmup
  against moto's server on loopback (the request a sender makes once per block);
- `reservations_per_cap`: requests one sender makes to spend a whole cap of `--cap`.
Prints figures, never fails on time.

    .venv/bin/python bench/warmup_picker.py
    .venv/bin/python bench/warmup_picker.py --picks 50000 --runs 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from quiver.devstack.moto_server import client, start_moto
from quiver.policy import Policy, parse_policy
from quiver.routing.sources import SourcePicker
from quiver.storage.dynamo_warmup import DynamoWarmup
from quiver.storage.warmup import MemoryWarmup, Plan
from quiver.warmup.days import DayKeeper
from quiver.warmup.gate import WarmupGate

TODAY = dt.datetime.now(dt.UTC).date()


def policy(cap: int | None) -> Policy:
    warmup = (f'[warmup.new]\ntemplate = "standard"\nstart = "{TODAY}"\n'
              f'caps = {{ default = [{cap}] }}\n') if cap else ""
    return parse_policy(f"""
default_pool = "p"
[sources.new]
ip = "192.0.2.1"
ehlo = "new.example.com"
[sources.old]
ip = "192.0.2.2"
ehlo = "old.example.com"
[pools.p]
sources = {{ new = 1, old = 1 }}
{warmup}""")


def picker(p: Policy, store: MemoryWarmup | None) -> SourcePicker:
    if store is None:
        return SourcePicker(p)
    days = DayKeeper(policy=p.warmup, store=store)
    return SourcePicker(p, warmup=WarmupGate(policy=p.warmup, store=store, days=days))


async def cpu_per_pick(pick: SourcePicker, picks: int) -> float:
    await pick.pick("p", provider="example")  # settle the day outside the timing
    start = time.process_time()
    for _ in range(picks):
        await pick.pick("p", provider="example")
    return (time.process_time() - start) / picks * 1e6


async def spend(cap: int) -> int:
    store = MemoryWarmup()
    pick = picker(policy(cap), store)
    # Two sources of weight 1: the warming one takes every other pick until capped.
    for _ in range(4 * cap):
        await pick.pick("p", provider="example")
    assert store.taken[("new", "example", str(TODAY))] == cap
    return store.reservations


async def dynamo_reserves(count: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_moto(log_dir=Path(tmp))
        try:
            ddb = client(server.endpoint, "dynamodb")
            table = f"controls-{uuid.uuid4().hex[:8]}"
            ddb.create_table(
                TableName=table, BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                           {"AttributeName": "sk", "KeyType": "RANGE"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}])
            store = DynamoWarmup(ddb, table)
            out = []
            for _ in range(count):
                start = time.perf_counter()
                await store.reserve(source="new", provider="example", date=str(TODAY), want=1,
                                    plan=Plan(cap=10 * count, day=1, template="standard"))
                out.append((time.perf_counter() - start) * 1000)
            return out
        finally:
            server.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"plain": [], "warming": [], "capped": []}
    for _ in range(args.runs):
        runs["plain"].append(await cpu_per_pick(picker(policy(None), None), args.picks))
        runs["warming"].append(await cpu_per_pick(
            picker(policy(10 * args.picks), MemoryWarmup()), args.picks))
        capped = MemoryWarmup()
        capped.taken[("new", "example", str(TODAY))] = 1
        runs["capped"].append(await cpu_per_pick(picker(policy(1), capped), args.picks))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    reserves = sorted(await dynamo_reserves(args.reserves))
    return {
        "picks": args.picks, "runs": args.runs,
        "plain_us_per_pick": round(medians["plain"], 2),
        "warming_us_per_pick": round(medians["warming"], 2),
        "capped_us_per_pick": round(medians["capped"], 2),
        "ratio_warming": round(medians["warming"] / medians["plain"], 2),
        "ratio_capped": round(medians["capped"] / medians["plain"], 2),
        "dynamo_reserve_ms_p50": round(statistics.median(reserves), 2),
        "dynamo_reserve_ms_p90": round(reserves[int(0.9 * (len(reserves) - 1))], 2),
        "cap": args.cap, "reservations_per_cap": await spend(args.cap),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reserves", type=int, default=200)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    args = parser.parse_args()
    figures = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
