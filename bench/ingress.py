"""What the ingresses accept: messages per second and CPU per accepted message.

HTTP half: the local stack's HTTP injection API (the IngressService the Lambda runs,
behind the loopback server) over moto's server, fed `--batches` POSTs of `--batch`
single-recipient ~2 KB raw messages by one client. Per run: accepted msg/s (wall)
and the CPU of this process (server, its AWS calls and the client; moto runs in its
own process) per accepted message. Medians of `--runs` runs. Bounded in count; prints
figures, never fails on time.

Each path is one function in PATHS returning its figures, so another ingress (the
SMTP listener, and Postfix's smtpd as the peer) is one more entry.

    .venv/bin/python bench/ingress.py
    .venv/bin/python bench/ingress.py --batches 10 --batch 100 --runs 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiver.devstack.injectors import HttpInjector
from quiver.devstack.moto_server import client, create_resources, start_moto
from quiver.devstack.servers.ingress_http import IngressHttp, local_ingress
from quiver.devstack.stack import DEMO_TENANT, DEMO_TENANT_DOMAIN, demo_tenant_toml
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.tenants.keys import TenantKeys

POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
""" + demo_tenant_toml()
BODY = ("x" * 70 + "\r\n") * 28


def _raw(i: int) -> str:
    text = (f"From: a@news.{DEMO_TENANT_DOMAIN}\r\nTo: u{i}@alpha.test\r\nSubject: m{i}\r\n"
            f"Message-ID: <b{i}@x>\r\n\r\n{BODY}")
    return base64.b64encode(text.encode()).decode()


def http_figures(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    moto = start_moto(log_dir=root)
    try:
        deployment = create_resources(moto.endpoint)
        client(moto.endpoint, "ssm").put_parameter(
            Name=deployment.policy_parameter, Value=POLICY, Type="String", Overwrite=True)
        keys = TenantKeys(DynamoTenantKeys(client(moto.endpoint, "dynamodb"),
                                           deployment.tenant_keys_table))
        key, _ = asyncio.run(keys.create(tenant=DEMO_TENANT, who="bench", now=time.time()))
        server = IngressHttp(local_ingress(endpoint=moto.endpoint, deployment=deployment))
        try:
            injector = HttpInjector.for_url(server.url, key)
            rates, cpu = [], []
            for run in range(args.runs):
                bodies = [json.dumps({"messages": [
                    {"id": f"r{run}-b{b}-m{i}", "from": f"a@news.{DEMO_TENANT_DOMAIN}",
                     "to": [f"u{i}@alpha.test"], "raw": _raw(i)}
                    for i in range(args.batch)]}).encode() for b in range(args.batches)]
                wall, cpu0, accepted = time.monotonic(), time.process_time(), 0
                for body in bodies:
                    status, answer = injector.post(body)
                    accepted += int(answer.get("accepted", 0)) if status == 200 else 0
                wall, used = time.monotonic() - wall, time.process_time() - cpu0
                rates.append(accepted / wall if wall > 0 else 0.0)
                cpu.append(used * 1e6 / accepted if accepted else float("nan"))
            return {"accepted_per_run": args.batches * args.batch,
                    "msg_per_s": round(statistics.median(rates), 1),
                    "cpu_us_per_msg": round(statistics.median(cpu), 1),
                    "runs": args.runs}
        finally:
            server.stop()
    finally:
        moto.stop()


PATHS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "http": http_figures,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10, help="POSTs per run (default 10)")
    parser.add_argument("--batch", type=int, default=100,
                        help="messages per POST, at most 500 (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    args.batch = max(1, min(args.batch, 500))
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="quiver-bench-ingress-") as tmp:
        for name, measure in PATHS.items():
            figures[name] = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(figures, sort_keys=True))
        return
    for name, f in figures.items():
        print(f"{name}: {f['msg_per_s']} accepted msg/s, {f['cpu_us_per_msg']} CPU us per "
              f"accepted message (medians of {f['runs']} runs of {f['accepted_per_run']})")


if __name__ == "__main__":
    main()
