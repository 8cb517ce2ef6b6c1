"""Variable AWS cost per million messages, from the calls and CPU measured in a run.

The rig is bench/e2e.py's (moto's server on loopback, `quiver sender` with DKIM
RSA-2048, smtp-sink as the MX): a feeder enqueues N messages through
`quiver.client`, the sender delivers them, then the event export (the Lambda's
code, `quiver.export.Exporter`, with the deployed batch size) drains the events
queue into S3, claiming final events in the finals table. moto logs every request
of every service (bench/lean_moto.log_requests) with what it bills: SQS requests
per started 64 KB of payload, DynamoDB write/read request units by item size, S3
PUT/GET classes. Priced from bench/prices_us_east_1.toml (us-east-1 list prices,
with their date and sources):

- SQS: the caller's enqueue, the sender's receives/deletes/re-enqueues on the
  outbound queue, its event batches, the export's receives and deletes;
- DynamoDB: per table (finals, suppression, senders, controls), WRU and RRU;
- S3: event objects and spills;
- Lambda: export invocations x measured duration x the memory in cdk/event_export.py;
- Fargate: the sender's measured CPU per message as vCPU-seconds, and the task's
  memory (cdk/sender_service.py sizing for policy/quiver.toml) for the share of a
  task's time that CPU takes, at full use of its vCPUs.

Fixed costs (proxy instances, Elastic IPs, interface endpoints, the fleet's minimum
tasks) are a separate monthly line. Each per-message figure is the median of the
runs. Prints figures, never fails on time.

    .venv/bin/python bench/cost.py                      # 5,000 messages, 3 runs
    .venv/bin/python bench/cost.py --messages 300 --runs 3 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cost_model
from e2e import Bench, Settings, binary, progress, progress_done, terminated_as_exit

from quiver.devstack import moto_server
from quiver.export import Exporter
from quiver.storage.dynamo import DynamoFinals

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # cdk/deploy_checks: the task sizing the CDK app deploys
# Calls the benchmark itself makes (queue depth polls), not the system's.
BENCH_ONLY = {("sqs", "GetQueueAttributes")}


@dataclass(frozen=True, slots=True)
class Sizing:
    """What cdk/ deploys, read from its source (the CDK library is not needed)."""

    export_batch: int
    export_memory_mb: int
    export_arch: str
    task_vcpus: int
    task_memory_mb: int
    task_arch: str
    min_tasks: int
    proxy_nodes: int
    proxy_instance: str
    public_ipv4: int
    azs: int
    interface_endpoints: int


def sizing(policy_path: Path = ROOT / "policy" / "quiver.toml") -> Sizing:
    from cdk.deploy_checks import MEMORY_MIB_PER_VCPU, task_vcpus
    from quiver.policy import load_policy

    policy = load_policy(policy_path)
    export = (ROOT / "cdk" / "event_export.py").read_text()
    sender = (ROOT / "cdk" / "sender_service.py").read_text()
    proxy = (ROOT / "cdk" / "proxy_tier.py").read_text()
    network = (ROOT / "cdk" / "network.py").read_text()

    def find(pattern: str, text: str, what: str) -> str:
        found = re.search(pattern, text)
        if found is None:
            raise RuntimeError(f"bench/cost.py: cannot find {what} in cdk/; update sizing()")
        return found.group(1)

    vcpus = task_vcpus(policy)
    azs = {node.az for node in policy.proxy.nodes.values()}
    return Sizing(
        export_batch=int(find(r"\bBATCH_SIZE = (\d+)", export, "the export batch size")),
        export_memory_mb=int(find(r"timeout=EXPORT_TIMEOUT, memory_size=(\d+)", export,
                                  "the export memory")),
        export_arch="arm64" if "Architecture.ARM_64" in export else "x86_64",
        task_vcpus=vcpus,
        task_memory_mb=MEMORY_MIB_PER_VCPU * vcpus,
        task_arch="arm64" if "CpuArchitecture.ARM64" in sender else "x86_64",
        min_tasks=int(find(r"min_tasks: int = (\d+)", sender, "the minimum task count")),
        proxy_nodes=len(policy.proxy.nodes),
        proxy_instance=find(r'DEFAULT_INSTANCE_TYPE = "([^"]+)"', proxy, "the proxy type"),
        public_ipv4=len(policy.sources),
        azs=max(1, len(azs)),
        interface_endpoints=len(re.findall(r"InterfaceVpcEndpointAwsService\.\w+\)", network)),
    )


@dataclass
class Measured:
    messages: int
    sender_cpu_s: float
    requests: list[dict[str, Any]]
    export_invocations: int
    export_seconds: float


class CostBench(Bench):
    """bench/e2e.py's rig without Postfix or the latency phase; after each run the
    export drains the events queue."""

    def __init__(self, settings: Settings, root: Path, exits: contextlib.ExitStack,
                 sizes: Sizing) -> None:
        super().__init__(settings, root, exits)
        self.request_log = root / "logs" / "moto-requests.jsonl"
        # No status endpoint: its fixed port may be taken on a shared machine.
        self.sender_args = ["--status-port", "off"]
        self.sizes = sizes
        self.measured: list[Measured] = []

    def _start_postfix(self) -> None:
        self.outcome.postfix_skipped = "not used by bench/cost.py"

    def latency(self) -> None:
        return

    def postfix_run(self, number: int) -> None:
        return

    def _exporter(self) -> tuple[Exporter, Any]:
        dynamodb = moto_server.client(self.moto.endpoint, "dynamodb")
        finals = (DynamoFinals(dynamodb, self.deployment.finals_table)
                  if self.deployment.finals_table else None)
        exporter = Exporter(s3=moto_server.client(self.moto.endpoint, "s3"),
                            bucket=self.deployment.events_bucket, finals=finals)
        return exporter, moto_server.client(self.moto.endpoint, "sqs")

    def export(self) -> tuple[int, float]:
        """Drain the events queue as the Lambda's event source mapping would: batches of
        up to `export_batch` messages, each an invocation, deleted once exported.
        Returns (invocations, seconds spent exporting)."""
        exporter, sqs = self._exporter()
        url = self.deployment.events_queue_url
        invocations, seconds, idle = 0, 0.0, 0
        deadline = time.monotonic() + 300
        while idle < 2 and time.monotonic() < deadline:
            got: list[dict[str, Any]] = []
            while len(got) < self.sizes.export_batch:
                more = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0 if got else 1,
                                           VisibilityTimeout=60).get("Messages", [])
                if not more:
                    break
                got += more
            if not got:
                idle += 1
                continue
            idle = 0
            started = time.perf_counter()
            for m in got:
                exporter.export_record(_Body(m["Body"]))
            seconds += time.perf_counter() - started
            invocations += 1
            for start in range(0, len(got), 10):
                sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(got[start:start + 10])])
        return invocations, seconds

    def warm_up(self) -> None:
        super().warm_up()
        self.export()  # the warm-up's events are not a run's

    def quiver_run(self, number: int) -> Any:
        assert self.request_log is not None
        mark = self.request_log.stat().st_size if self.request_log.exists() else 0
        run = super().quiver_run(number)
        if run is None or not run.complete:
            return run
        progress(f"cost run {number}: exporting the events ...")
        invocations, seconds = self.export()
        with self.request_log.open("rb") as f:
            f.seek(mark)
            requests = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        self.measured.append(Measured(messages=run.messages, sender_cpu_s=run.sender_cpu_s,
                                      requests=requests, export_invocations=invocations,
                                      export_seconds=seconds))
        progress_done(f"cost run {number}: {len(requests)} AWS requests, "
                      f"{invocations} export invocations")
        return run


class _Body:
    def __init__(self, body: str) -> None:
        self.body = body


def roles(bench: CostBench) -> dict[str, str]:
    """Resource name → its role (outbound, events, finals, ...)."""
    d = bench.deployment
    named = {
        d.outbound_queue_url.rsplit("/", 1)[-1]: "outbound queue",
        d.outbound_dlq_url.rsplit("/", 1)[-1]: "outbound DLQ",
        d.events_queue_url.rsplit("/", 1)[-1]: "events queue",
        d.spill_bucket: "spill bucket", d.events_bucket: "events bucket",
        d.suppression_table: "suppression table", d.finals_table: "finals table",
        d.senders_table: "senders table", d.controls_table: "controls table",
    }
    return {k: v for k, v in named.items() if k}


def line_items(m: Measured, *, prices: cost_model.Prices, sizes: Sizing,
               role: dict[str, str]) -> dict[str, dict[str, float]]:
    """{line item: {per_msg, usd_per_million}} for one run."""
    n = m.messages
    per: dict[str, float] = defaultdict(float)  # line → units per message
    usd: dict[str, float] = defaultdict(float)  # line → USD per message
    for r in m.requests:
        svc, op = r.get("svc"), r.get("op")
        if (svc, op) in BENCH_ONLY:
            continue
        where = role.get(str(r.get("target", "")), str(r.get("target", "")))
        if svc == "sqs":
            key = f"sqs {where} {op} (billed requests)"
            per[key] += r.get("billed", 1) / n
            usd[key] += r.get("billed", 1) * prices.sqs_request / n
        elif svc == "dynamodb":
            for unit, price in (("wru", prices.ddb_write_unit), ("rru", prices.ddb_read_unit)):
                if r.get(unit):
                    key = f"dynamodb {where} {op} ({unit.upper()})"
                    per[key] += r[unit] / n
                    usd[key] += r[unit] * price / n
        elif svc == "s3" and op in ("PUT", "GET"):
            key = f"s3 {where} {op}"
            per[key] += 1 / n
            usd[key] += (prices.s3_put if op == "PUT" else prices.s3_get) / n
    key = "lambda export invocations"
    per[key] = m.export_invocations / n
    usd[key] = m.export_invocations * prices.lambda_request / n
    gb_s = m.export_seconds * sizes.export_memory_mb / 1024
    key = f"lambda export GB-seconds ({sizes.export_memory_mb} MB, {sizes.export_arch})"
    per[key] = gb_s / n
    usd[key] = gb_s * prices.lambda_gb_s[sizes.export_arch] / n
    cpu = m.sender_cpu_s / n
    key = f"fargate sender vCPU-seconds ({sizes.task_arch})"
    per[key] = cpu
    usd[key] = cpu * prices.fargate_vcpu_s[sizes.task_arch]
    gb = sizes.task_memory_mb / 1024 * cpu / sizes.task_vcpus
    key = (f"fargate sender GB-seconds ({sizes.task_memory_mb} MiB per "
           f"{sizes.task_vcpus} vCPU)")
    per[key] = gb
    usd[key] = gb * prices.fargate_gb_s[sizes.task_arch]
    return {k: {"per_msg": per[k], "usd_per_million": usd[k] * 1e6} for k in per}


def fixed_monthly(prices: cost_model.Prices, sizes: Sizing) -> dict[str, float]:
    hours = prices.hours_per_month
    ec2 = prices.ec2_hour.get(sizes.proxy_instance)
    if ec2 is None:
        raise cost_model.PriceError(f"no price for the proxy type {sizes.proxy_instance} "
                                    "in [fixed] ec2_usd_per_hour")
    task_hour = (sizes.task_vcpus * prices.fargate_vcpu_s[sizes.task_arch]
                 + sizes.task_memory_mb / 1024 * prices.fargate_gb_s[sizes.task_arch]) * 3600
    items = {
        f"proxy instances ({sizes.proxy_nodes} x {sizes.proxy_instance})":
            sizes.proxy_nodes * ec2 * hours,
        f"public IPv4 / Elastic IPs ({sizes.public_ipv4} sources)":
            sizes.public_ipv4 * prices.ipv4_hour * hours,
        f"interface VPC endpoints ({sizes.interface_endpoints} x {sizes.azs} AZs)":
            sizes.interface_endpoints * sizes.azs * prices.endpoint_az_hour * hours,
        "NAT gateways (none: isolated subnets)": 0.0,
        f"sender fleet minimum ({sizes.min_tasks} tasks x {sizes.task_vcpus} vCPU)":
            sizes.min_tasks * task_hour * hours,
    }
    out = {k: round(v, 2) for k, v in items.items()}
    out["total"] = round(sum(items.values()), 2)
    return out


def summary(bench: CostBench, prices: cost_model.Prices, sizes: Sizing) -> dict[str, Any]:
    role = roles(bench)
    runs = [line_items(m, prices=prices, sizes=sizes, role=role) for m in bench.measured]
    keys = sorted({k for r in runs for k in r})
    items = {k: {"per_msg": round(statistics.median(r.get(k, {}).get("per_msg", 0.0)
                                                    for r in runs), 6),
                 "usd_per_million": round(statistics.median(
                     r.get(k, {}).get("usd_per_million", 0.0) for r in runs), 4)}
             for k in keys} if runs else {}
    totals = [sum(v["usd_per_million"] for v in r.values()) for r in runs]
    return {
        "usd_per_million": round(statistics.median(totals), 4) if totals else None,
        "usd_per_million_runs": [round(t, 4) for t in totals],
        "line_items": items,
        "fixed_usd_per_month": fixed_monthly(prices, sizes),
        "messages": bench.s.messages,
        "runs": len(runs),
        "recipients_per_message": 1,
        "message_bytes": 5000,
        "prices_recorded": prices.recorded,
        "prices": str(cost_model.PRICES.relative_to(ROOT)),
        "sizing": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__},
        "notes": [
            "requests measured on moto's server; billed as AWS bills them (64 KB SQS "
            "chunks: request payload for sends, the answer for receives)",
            "Lambda duration measured here, on loopback to moto: an upper bound",
            "Fargate at full use of the task's vCPUs; idle capacity is in the fixed line",
            "storage (S3 GB-months, DynamoDB GB-months), logs and data transfer not included",
        ],
    }


def table(data: dict[str, Any], out: Any) -> None:
    print(f"{'line item':<72} {'per msg':>10} {'USD/million':>12}", file=out)
    for key, v in data["line_items"].items():
        print(f"{key:<72} {v['per_msg']:>10.4f} {v['usd_per_million']:>12.4f}", file=out)
    print(f"{'usd_per_million (median of runs)':<72} {'':>10} "
          f"{data['usd_per_million'] or 0:>12.4f}", file=out)
    print("fixed, per month:", file=out)
    for key, v in data["fixed_usd_per_month"].items():
        print(f"  {key:<70} {v:>12,.2f}", file=out)


def parse_args(argv: list[str] | None) -> tuple[Settings, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=5000, help="per run (default 5,000)")
    p.add_argument("--runs", type=int, default=3, help="runs; medians (default 3)")
    p.add_argument("--prices", type=Path, default=None, help="price table (TOML)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    a = p.parse_args(argv)
    if a.messages < 1 or a.runs < 1:
        p.error("--messages and --runs must be at least 1")
    return Settings(
        messages=a.messages, runs=a.runs, receivers=8, connections=12, inflight=300,
        depth=100, latency_messages=0, latency_rate=1.0, postfix_sessions=1, moto="lean",
        signing_processes=None, signing_threads=None, profile=False, keep=a.keep,
        as_json=a.json,
    ), a.prices


def main(argv: list[str] | None = None) -> int:
    settings, prices_path = parse_args(argv)
    try:
        prices = cost_model.load_prices(prices_path or cost_model.PRICES)
    except cost_model.PriceError as exc:
        print(f"bench/cost.py: {exc}", file=sys.stderr)
        return 2
    if binary("smtp-sink") is None:
        print("bench/cost.py: smtp-sink is not installed (Debian package: postfix); "
              "run `apt-get install postfix`", file=sys.stderr)
        return 2
    sizes = sizing()
    root = Path(tempfile.mkdtemp(prefix="quiver-cost-"))
    finished = False
    with terminated_as_exit(), contextlib.ExitStack() as exits:
        exits.callback(lambda: None if settings.keep or not finished
                       else shutil.rmtree(root, ignore_errors=True))
        bench = CostBench(settings, root, exits, sizes)
        bench.run()
        data = summary(bench, prices, sizes)
        data["work_dir"], data["work_dir_kept"] = str(root), settings.keep
        finished = True
    if not finished or data["runs"] == 0:
        print(f"bench/cost.py: no complete run; logs in {root / 'logs'}", file=sys.stderr)
    table(data, sys.stderr if settings.as_json else sys.stdout)
    if settings.as_json:
        print(json.dumps(data, sort_keys=True, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
