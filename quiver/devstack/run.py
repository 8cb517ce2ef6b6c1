"""`quiver local`: start the embedded local stack and keep it up until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from quiver.devstack.demo_tenant import DEMO_KEY_VARIABLE, DEMO_TENANT
from quiver.devstack.export_pump import ExportPump, Tally
from quiver.devstack.policy_fragment import read_fragment
from quiver.devstack.servers.dns_records import ExtraRecord, RecordsError, load_records
from quiver.devstack.stack import FBL_ADDRESS, MX_DOMAINS, LocalStack
from quiver.policy import PolicyError

# How often the foreground loop wakes to report exported events (a signal wakes it
# at once).
REPORT_INTERVAL = 5.0


def run_local(*, root: Path, sender: bool = True, dns_file: Path | None = None,
              policy_file: Path | None = None, unsubscribe: bool = False,
              feedback: bool = False) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    root = root.resolve()
    try:
        records: tuple[ExtraRecord, ...] = tuple(load_records(dns_file)) if dns_file else ()
        fragment: dict[str, Any] | None = read_fragment(policy_file) if policy_file else None
        stack = LocalStack(
            root, max_age="1h", dns_records=records, dns_origin=str(dns_file),
            policy_fragment=fragment, fragment_origin=str(policy_file),
            unsubscribe=unsubscribe, feedback=feedback, http_ingress=True,
        )
        print(f"starting the local stack in {root} ...", flush=True)
        # Checks both files before any server starts: a broken one costs nothing to fix.
        stack.start()
    except (RecordsError, PolicyError) as exc:
        print(f"quiver local: {exc}", file=sys.stderr)
        return 2
    with stack:
        assert stack.deployment is not None and stack.moto and stack.mx and stack.dns
        tally = Tally()
        pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                          environ=stack.env())
        pump.start()
        process = stack.start_sender() if sender else None
        env_file = root / "env.sh"
        env_file.write_text("".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in sorted(stack.env().items())
        ))
        print(_banner(stack, env_file=env_file, records=records, dns_file=dns_file,
                      policy_file=policy_file, sender=process), flush=True)
        while not stop.wait(REPORT_INTERVAL):
            if process is not None and process.poll() is not None:
                print(f"sender exited with {process.returncode}; see its log; stopping")
                break
            if tally.records:
                print(f"events exported so far: {dict(_totals(tally))}", flush=True)
        pump.stop()
    print("local stack stopped", flush=True)
    return 0


def sender_command(stack: LocalStack) -> str:
    """One shell line that runs a sender against `stack`: its environment, this Python's
    quiver, the stack's policy and nameserver. Run it as often as you like."""
    assert stack.policy_path is not None
    variables = stack.env()
    # The same code as this stack's, also when it runs from a source tree.
    if os.environ.get("PYTHONPATH"):
        variables["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(variables.items()))
    argv = [*_quiver_argv(), "sender", "--config", str(stack.policy_path),
            "--nameserver", stack.nameserver]
    return f"env {env} {shlex.join(argv)}"


def _quiver_argv() -> list[str]:
    """How this process was started as quiver: the `quiver` script if that is what ran,
    else this interpreter with -m, so the printed command runs the same code."""
    script = Path(sys.argv[0])
    if script.name == "quiver" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.resolve())]
    return [sys.executable, "-m", "quiver"]


def _banner(stack: LocalStack, *, env_file: Path, records: tuple[ExtraRecord, ...],
            dns_file: Path | None, policy_file: Path | None,
            sender: subprocess.Popen[bytes] | None) -> str:
    assert stack.deployment is not None and stack.moto and stack.mx and stack.dns
    root = stack.root
    domain = next(iter(MX_DOMAINS))
    zones = ", ".join(MX_DOMAINS) + ", ..."
    if records:
        zones += f"; {len(records)} record(s) from {dns_file}"
    policy = str(stack.policy_path) + (f"   ({policy_file} merged over it)" if policy_file else "")
    unsubscribe_line = (f"  unsubscribe         {stack.unsubscribe_server.url}<token>   "
                        "(GET confirms, POST unsubscribes)\n"
                        if stack.unsubscribe_server is not None else "")
    if stack.inbound is not None:
        host, port = stack.inbound.address
        unsubscribe_line += (f"  inbound (SES)       {host}:{port}   (bounce domains and "
                             f"{FBL_ADDRESS}; intakes log to {root / 'logs'})\n")
    if stack.ingress_server is not None:
        unsubscribe_line += (f"  HTTP ingress        POST {stack.ingress_server.url}   (tenant "
                             f"{DEMO_TENANT}, its key ${DEMO_KEY_VARIABLE} in the env file)\n")
    if stack.smtp_ingress is not None:
        host, port = stack.smtp_ingress.address
        unsubscribe_line += (f"  SMTP submission     {host}:{port}   (STARTTLS, then AUTH as "
                             f"tenant {stack.smtp_ingress.tenant}: $QUIVER_SMTP_USER / "
                             "$QUIVER_SMTP_PASSWORD in env.sh)\n")
    sender_line = (f"  sender log          {root / 'logs' / 'sender.log'}\n" if sender
                   else "  sender              not started (--no-sender): run it as below\n")
    text = f"""
Quiver local stack is up.
  AWS (moto server)   {stack.moto.endpoint}
  outbound queue      {stack.deployment.outbound_queue_url}
  events bucket       s3://{stack.deployment.events_bucket}/events/
  DNS ({stack.dns.kind:<8})      {stack.nameserver}   (zones: {zones})
  receiving MX        {stack.mx.address[0]}:{stack.mx.address[1]}   (keeps mail in {root / 'mx'})
  egress              {stack.describe_egress()}
  policy              {policy}
{unsubscribe_line}{sender_line}
Enqueue a message from another shell:
  source {env_file}
  quiver enqueue --from hello@news.quiver-demo.test --to someone@{domain} message.eml
"""
    if sender is None:
        text += f"""
Run the sender from another shell (stop it with Ctrl-C; kill -9 it and run this
again as often as you like, the stack stays up):
  {sender_command(stack)}
"""
    return text + "\nPress Ctrl-C to stop."


def _totals(tally: Tally) -> dict[str, int]:
    out: dict[str, int] = {}
    for (event, _), n in tally.counts.items():
        out[event] = out.get(event, 0) + n
    return out
