"""Ingress: what accepting a message costs, against Postfix accepting the same load.

SMTP:    smtp-source → `quiver ingress smtp` (a process of its own) → SendMessage to
         moto's server (SQS)
HTTP:    POSTs of 100 messages → the HTTP injection API (the IngressService the Lambda
         runs, behind the local stack's loopback server, in this process) → SendMessage
         to moto's server
Postfix: smtp-source → Postfix's smtpd → its queue on tmpfs (private instance, no
         queue manager: the messages stay in incoming/, so only acceptance is paid)

The same smtp-source command (sessions, messages of 5 KB, one recipient) drives
both, in alternating runs; each figure is the median over the runs. Printed per
side: accepted messages per second (smtp-source's start to its exit, which is
after the last 250) and CPU µs per accepted message (the listener process alone,
its enqueue threads included, moto's server apart and printed beside it; every
Postfix process), and the ratios Quiver / Postfix. Bounded in count and time; a
run that does not finish in time is reported incomplete. Prints figures, never
fails on time.

    .venv/bin/python bench/ingress.py                       # 2,000 messages, 3 runs
    .venv/bin/python bench/ingress.py --messages 500 --runs 1 --json

Each half is a function of the settings returning its figures (HALVES). The HTTP
half's CPU is this process's (server, its AWS calls and the client; moto apart), and
its ratios are against the Postfix runs of the SMTP half.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lean_moto
from postfix_peer import MESSAGE_BYTES, PostfixPeer, PostfixUnavailable, unavailable_reason
from rig import binary, tree_cpu_seconds

from quiver.devstack import moto_server
from quiver.devstack.demo_tenant import DEMO_TENANT, DEMO_TENANT_DOMAIN, demo_tenant_toml
from quiver.devstack.injectors import HttpInjector
from quiver.devstack.processes import free_port, stop_process
from quiver.devstack.servers.ingress_http import IngressHttp, local_ingress
from quiver.settings import deployment_env
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.tenants.keys import TenantKeys

SENDER = "bench@news.quiver-demo.test"
RECIPIENT = "user@sink.bench.quiver.test"
RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Settings:
    messages: int
    sessions: int
    runs: int
    as_json: bool


@dataclass(frozen=True)
class Run:
    accepted: int
    seconds: float
    cpu_s: float  # the accepting side's processes
    complete: bool
    aside_cpu_s: float = 0.0  # moto's server (Quiver's side only)

    @property
    def msgs_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_s / self.accepted * 1e6 if self.accepted else 0.0


def inject(port: int, s: Settings) -> tuple[float, bool]:
    """smtp-source into 127.0.0.1:port; (seconds, finished in time with exit 0)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [binary("smtp-source") or "smtp-source", "-d", "-s", str(s.sessions),
             "-m", str(s.messages), "-l", str(MESSAGE_BYTES), "-f", SENDER, "-t", RECIPIENT,
             f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            timeout=RUN_TIMEOUT, check=False)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return time.monotonic() - started, ok


class QuiverSide:
    """moto's server and a `quiver ingress smtp` process that lets loopback in."""

    def __init__(self, root: Path) -> None:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.moto, _ = lean_moto.start(log_dir=root / "logs", lean=True)
        self.deployment = moto_server.create_resources(self.moto.endpoint)
        self.sqs = moto_server.client(self.moto.endpoint, "sqs")
        self.port = free_port()
        self.log = (root / "logs" / "ingress.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quiver", "ingress", "smtp", "--host", "127.0.0.1",
             "--port", str(self.port), "--allow-network", "127.0.0.0/8"],
            env={**os.environ, **moto_server.aws_env(self.moto.endpoint),
                 **deployment_env(self.deployment)},
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_listening(self.port, self.process)

    def queued(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.deployment.outbound_queue_url,
            AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def run(self, s: Settings) -> Run:
        # The queue keeps earlier runs' messages (SQS allows one purge a minute): a run
        # counts what it added.
        before = self.queued()
        cpu0, moto0 = tree_cpu_seconds(self.process.pid), tree_cpu_seconds(self.moto.process.pid)
        seconds, ok = inject(self.port, s)
        cpu1, moto1 = tree_cpu_seconds(self.process.pid), tree_cpu_seconds(self.moto.process.pid)
        accepted = self.queued() - before
        return Run(accepted=accepted, seconds=seconds, cpu_s=cpu1 - cpu0,
                   complete=ok and accepted == s.messages, aside_cpu_s=moto1 - moto0)

    def stop(self) -> None:
        stop_process(self.process, timeout=30)
        self.log.close()
        self.moto.stop()


class PostfixSide:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.peer = PostfixPeer(work_dir=root, port=self.port, sink_port=free_port(),
                                accept_only=True).start()

    def run(self, s: Settings) -> Run:
        before = self.peer.queued()
        cpu0 = self.peer.cpu_seconds()
        seconds, ok = inject(self.port, s)
        cpu1 = self.peer.cpu_seconds()
        accepted = self.peer.queued() - before
        return Run(accepted=accepted, seconds=seconds, cpu_s=cpu1 - cpu0,
                   complete=ok and accepted == s.messages)

    def stop(self) -> None:
        self.peer.stop()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"quiver ingress smtp exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as c:
            c.recv(100)
            c.sendall(b"QUIT\r\n")
            return
        time.sleep(0.1)
    raise RuntimeError("quiver ingress smtp did not listen within 60 s")


def _median(runs: list[Run], key: Callable[[Run], float]) -> float:
    return round(statistics.median(key(r) for r in runs), 1)


def smtp_half(s: Settings, root: Path) -> dict[str, Any]:
    """smtp-source into the SMTP listener and into Postfix, alternating runs."""
    if binary("smtp-source") is None:
        return {"skipped": "smtp-source is not installed (Debian package: postfix)"}
    reason = unavailable_reason()
    quiver_runs: list[Run] = []
    postfix_runs: list[Run] = []
    with _side(QuiverSide, root / "quiver") as quiver, \
            _side(PostfixSide if reason is None else None, root / "postfix") as postfix:
        for n in range(s.runs):
            quiver_runs.append(quiver.run(s))
            if postfix is not None:
                postfix_runs.append(postfix.run(s))
            _progress(s, f"run {n + 1}/{s.runs}: quiver {quiver_runs[-1].msgs_per_s:.0f} msg/s"
                      + (f", postfix {postfix_runs[-1].msgs_per_s:.0f} msg/s"
                         if postfix_runs else ""))
    out: dict[str, Any] = {"quiver": _figures(quiver_runs)}
    out["quiver"]["moto_cpu_us_per_msg"] = _median(
        quiver_runs, lambda r: r.aside_cpu_s / r.accepted * 1e6 if r.accepted else 0.0)
    if postfix_runs:
        out["postfix"] = _figures(postfix_runs)
        q, p = out["quiver"], out["postfix"]
        out["ratio_msgs_per_s"] = round(q["msgs_per_s"] / p["msgs_per_s"], 2) \
            if p["msgs_per_s"] else None
        out["ratio_cpu_us_per_msg"] = round(q["cpu_us_per_msg"] / p["cpu_us_per_msg"], 2) \
            if p["cpu_us_per_msg"] else None
    else:
        out["postfix"] = {"skipped": reason}
    return out


@contextlib.contextmanager
def _side(kind: Any, root: Path) -> Iterator[Any]:
    if kind is None:
        yield None
        return
    root.mkdir(parents=True, exist_ok=True)
    try:
        side = kind(root)
    except PostfixUnavailable:
        yield None
        return
    try:
        yield side
    finally:
        side.stop()


def _figures(runs: list[Run]) -> dict[str, Any]:
    return {
        "msgs_per_s": _median(runs, lambda r: r.msgs_per_s),
        "cpu_us_per_msg": _median(runs, lambda r: r.cpu_us_per_msg),
        "accepted": [r.accepted for r in runs],
        "complete": all(r.complete for r in runs),
    }


HTTP_BATCH = 100
HTTP_POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
""" + demo_tenant_toml()


def _http_body(run: int, first: int, count: int) -> bytes:
    body = ("x" * 70 + "\r\n") * (MESSAGE_BYTES // 72)
    messages = []
    for i in range(first, first + count):
        raw = (f"From: a@news.{DEMO_TENANT_DOMAIN}\r\nTo: u{i}@alpha.test\r\n"
               f"Subject: m{i}\r\nMessage-ID: <r{run}.{i}@bench>\r\n\r\n{body}")
        messages.append({"id": f"r{run}-m{i}", "from": f"a@news.{DEMO_TENANT_DOMAIN}",
                         "to": [f"u{i}@alpha.test"],
                         "raw": base64.b64encode(raw.encode()).decode()})
    return json.dumps({"messages": messages}).encode()


def http_half(s: Settings, root: Path) -> dict[str, Any]:
    """POSTs of HTTP_BATCH messages into the loopback API, one client."""
    root.mkdir(parents=True, exist_ok=True)
    moto = moto_server.start_moto(log_dir=root)
    try:
        deployment = moto_server.create_resources(moto.endpoint)
        moto_server.client(moto.endpoint, "ssm").put_parameter(
            Name=deployment.policy_parameter, Value=HTTP_POLICY, Type="String",
            Overwrite=True)
        keys = TenantKeys(DynamoTenantKeys(moto_server.client(moto.endpoint, "dynamodb"),
                                           deployment.tenant_keys_table))
        key, _ = asyncio.run(keys.create(tenant=DEMO_TENANT, who="bench", now=time.time()))
        server = IngressHttp(local_ingress(endpoint=moto.endpoint, deployment=deployment))
        try:
            injector = HttpInjector.for_url(server.url, key)
            runs = []
            for run in range(s.runs):
                bodies = [_http_body(run, i, min(HTTP_BATCH, s.messages - i))
                          for i in range(0, s.messages, HTTP_BATCH)]
                wall, cpu0, accepted = time.monotonic(), time.process_time(), 0
                for body in bodies:
                    status, answer = injector.post(body)
                    accepted += int(answer.get("accepted", 0)) if status == 200 else 0
                runs.append(Run(accepted=accepted, seconds=time.monotonic() - wall,
                                cpu_s=time.process_time() - cpu0,
                                complete=accepted == s.messages))
                _progress(s, f"http run {run + 1}/{s.runs}: {runs[-1].msgs_per_s:.0f} msg/s")
            return {"quiver": _figures(runs)}
        finally:
            server.stop()
    finally:
        moto.stop()


HALVES: dict[str, Callable[[Settings, Path], dict[str, Any]]] = {
    "smtp": smtp_half, "http": http_half}


def _against_postfix(results: dict[str, Any]) -> None:
    """The HTTP half's ratios against the Postfix runs of the SMTP half."""
    postfix = results.get("smtp", {}).get("postfix", {})
    http = results.get("http", {}).get("quiver")
    if not http or not postfix.get("msgs_per_s") or not postfix.get("cpu_us_per_msg"):
        return
    results["http"]["ratio_msgs_per_s"] = round(http["msgs_per_s"] / postfix["msgs_per_s"], 2)
    results["http"]["ratio_cpu_us_per_msg"] = round(
        http["cpu_us_per_msg"] / postfix["cpu_us_per_msg"], 2)


def _progress(s: Settings, text: str) -> None:
    print(text, file=sys.stderr if s.as_json else sys.stdout, flush=True)


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="per run (default 2000)")
    p.add_argument("--sessions", type=int, default=10,
                   help="smtp-source's parallel sessions (default 10)")
    p.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.messages < 1 or a.sessions < 1 or a.runs < 1:
        p.error("--messages, --sessions and --runs must be at least 1")
    return Settings(messages=a.messages, sessions=a.sessions, runs=a.runs, as_json=a.json)


def main(argv: list[str] | None = None) -> int:
    s = parse_args(argv)
    results: dict[str, Any] = {"messages": s.messages, "sessions": s.sessions, "runs": s.runs,
                               "message_bytes": MESSAGE_BYTES}
    with tempfile.TemporaryDirectory(prefix="quiver-bench-ingress-") as tmp:
        for name, half in HALVES.items():
            results[name] = half(s, Path(tmp) / name)
    _against_postfix(results)
    if s.as_json:
        print(json.dumps(results, sort_keys=True))
    else:
        smtp = results["smtp"]
        for side in ("quiver", "postfix"):
            figures = smtp.get(side, {})
            if "skipped" in figures:
                print(f"{side:8} skipped: {figures['skipped']}")
            elif figures:
                print(f"{side:8} {figures['msgs_per_s']:>8} msg/s accepted  "
                      f"{figures['cpu_us_per_msg']:>8} CPU µs/msg  "
                      f"complete {figures['complete']}")
        if "ratio_msgs_per_s" in smtp:
            print(f"quiver / postfix: {smtp['ratio_msgs_per_s']} x msg/s, "
                  f"{smtp['ratio_cpu_us_per_msg']} x CPU per message "
                  f"(moto's server: {smtp['quiver']['moto_cpu_us_per_msg']} µs/msg beside it)")
        http = results["http"]
        print(f"{'http':8} {http['quiver']['msgs_per_s']:>8} msg/s accepted  "
              f"{http['quiver']['cpu_us_per_msg']:>8} CPU µs/msg  "
              f"complete {http['quiver']['complete']}")
        if "ratio_msgs_per_s" in http:
            print(f"http / postfix: {http['ratio_msgs_per_s']} x msg/s, "
                  f"{http['ratio_cpu_us_per_msg']} x CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
