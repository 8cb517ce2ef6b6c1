"""What the tenant guards add to the export path, per batch of events.

The export's record function (`Exporter.export_record`: final-event claims in the
finals table, gzip'd objects in S3) runs on the same batches twice against moto's
server on loopback: without guards, and with them (counts into the controls table in
one transaction per 24 counters with the batch claim, a window Query per tenant and
campaign named). Each batch is `--events` events over `--tenants` tenants and twice as
many campaigns: 95 % delivered, 2 % hard bounces, 3 % deferred, complaints at 0.05 %
(below every threshold, so no pause is judged: the steady state). Printed, medians
over `--batches` batches: `plain_ms`, `guarded_ms`, `extra_ms`, `ratio`, the export
process's CPU per batch each way (`plain_cpu_ms`, `guarded_cpu_ms`), and the
DynamoDB requests the guards add per batch (`guard_requests`). moto answers far slower
than DynamoDB, so the milliseconds overstate AWS; the request count does not. Prints
figures, never fails on time.

    .venv/bin/python bench/guards_cost.py
    .venv/bin/python bench/guards_cost.py --batches 20 --events 500 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from quiver.devstack.moto_server import client, create_resources, start_moto
from quiver.envelope import Envelope
from quiver.events import Record, make_event, pack_batches
from quiver.export import Exporter
from quiver.guards.guard import Guard
from quiver.guards.store import DynamoGuardStore
from quiver.policy.guards import GuardsPolicy
from quiver.storage.dynamo import DynamoFinals

GUARD_OPERATIONS = frozenset({"TransactWriteItems", "Query", "UpdateItem"})


class Message:
    def __init__(self, body: str) -> None:
        self.body = body


def batch_events(n: int, *, tenants: int, seed: int, at: float) -> list[Record]:
    """One batch's events; the same for the same seed (a fixed pseudo-random mix)."""
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(n):
        k = seed * n + i
        tenant = f"tenant-{rng.randrange(tenants)}"
        env = Envelope(id=f"bench-{k}", sender="a@example.com", recipients=(f"r{k}@x.test",),
                       raw=b"x", tenant=tenant, campaign=f"{tenant}-c{rng.randrange(2)}")
        rcpt = f"r{k}@x.test"
        draw = rng.random()
        if draw < 0.0005:
            out.append(make_event("complaint", envelope=env, rcpt=rcpt, attempt=1, pool="p",
                                  at=at, feedback_type="abuse"))
        elif draw < 0.021:
            out.append(make_event("bounced", envelope=env, rcpt=rcpt, attempt=1, pool="p",
                                  at=at, bounce={"kind": "hard", "category": "bad-mailbox",
                                                 "reason": "550 5.1.1"}))
        elif draw < 0.051:
            out.append(make_event("deferred", envelope=env, rcpt=rcpt, attempt=1, pool="p",
                                  at=at))
        else:
            out.append(make_event("delivered", envelope=env, rcpt=rcpt, attempt=1, pool="p",
                                  at=at))
    return out


def timed(export: Exporter, bodies: list[str]) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for body in bodies:
        w, c = time.perf_counter(), time.process_time()
        export.export_record(Message(body))
        wall.append((time.perf_counter() - w) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return wall, cpu


def run(*, batches: int, events: int, tenants: int, root: Path) -> dict[str, Any]:
    server = start_moto(log_dir=root)
    try:
        deployment = create_resources(server.endpoint)
        s3, ddb = client(server.endpoint, "s3"), client(server.endpoint, "dynamodb")
        requests = {"n": 0}

        def count(model: Any, **_: Any) -> None:
            # The guards' operations; the finals claims use BatchGetItem/BatchWriteItem.
            if model.name in GUARD_OPERATIONS:
                requests["n"] += 1

        ddb.meta.events.register("before-call.dynamodb", count)
        finals = DynamoFinals(ddb, deployment.finals_table)
        now = time.time()
        guard = Guard(DynamoGuardStore(ddb, deployment.controls_table),
                      policy=GuardsPolicy, clock=lambda: now)
        plain = Exporter(s3=s3, bucket=deployment.events_bucket, finals=finals)
        guarded = Exporter(s3=s3, bucket=deployment.events_bucket, finals=finals, guard=guard)

        def bodies(offset: int) -> list[str]:
            out = []
            for b in range(batches):
                records = batch_events(events, tenants=tenants, seed=offset + b, at=now)
                ((_, body),) = pack_batches(records)
                out.append(body)
            return out

        timed(plain, bodies(10_000)[:2])  # warm both paths (connections, imports)
        timed(guarded, bodies(20_000)[:2])
        plain_wall, plain_cpu = timed(plain, bodies(0))
        before = requests["n"]
        guarded_wall, guarded_cpu = timed(guarded, bodies(batches))
        guard_requests = (requests["n"] - before) / batches
    finally:
        server.stop()
    p, g = statistics.median(plain_wall), statistics.median(guarded_wall)
    return {
        "events_per_batch": events, "tenants": tenants, "campaigns": tenants * 2,
        "batches": batches,
        "plain_ms": round(p, 2), "guarded_ms": round(g, 2), "extra_ms": round(g - p, 2),
        "ratio": round(g / p, 3),
        "plain_cpu_ms": round(statistics.median(plain_cpu), 2),
        "guarded_cpu_ms": round(statistics.median(guarded_cpu), 2),
        "guard_requests": round(guard_requests, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batches = max(1, min(args.batches, 200))  # bounded: each batch is a few requests
    with tempfile.TemporaryDirectory(prefix="quiver-guards-bench-") as tmp:
        figures = run(batches=batches, events=max(1, min(args.events, 5000)),
                      tenants=max(1, min(args.tenants, 50)), root=Path(tmp))
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>18}  {value}")


if __name__ == "__main__":
    main()
