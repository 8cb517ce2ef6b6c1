"""`quiver local`: start the embedded local stack and keep it up until Ctrl-C."""

from __future__ import annotations

import shlex
import signal
import threading
from pathlib import Path

from quiver.localstack.export_pump import ExportPump, Tally
from quiver.localstack.stack import MX_DOMAINS, LocalStack


def run_local(*, root: Path) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"starting the local stack in {root} ...")
    with LocalStack(root, max_age="1h").start() as stack:
        assert stack.deployment is not None and stack.moto and stack.mx and stack.dns
        tally = Tally()
        pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                           environ=stack.env())
        pump.start()
        sender = stack.start_sender()
        env_file = root / "env.sh"
        env_file.write_text("".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in sorted(stack.env().items())
        ))
        domain = next(iter(MX_DOMAINS))
        print(f"""
Quiver local stack is up.
  AWS (moto server)   {stack.moto.endpoint}
  outbound queue      {stack.deployment.outbound_queue_url}
  events bucket       s3://{stack.deployment.events_bucket}/events/
  DNS ({stack.dns.kind:<8})      {stack.nameserver}   (zones: {', '.join(MX_DOMAINS)}, ...)
  receiving MX        {stack.mx.address[0]}:{stack.mx.address[1]}   (keeps mail in {root / 'mx'})
  egress              {stack.describe_egress()}
  policy              {stack.policy_path}
  sender log          {root / 'logs' / 'sender.log'}

Enqueue a message from another shell:
  source {env_file}
  quiver enqueue --from hello@news.quiver-demo.test --to someone@{domain} message.eml

Press Ctrl-C to stop.""", flush=True)
        while not stop.wait(5.0):
            if sender.poll() is not None:
                print(f"sender exited with {sender.returncode}; see its log; stopping")
                break
            if tally.records:
                print(f"events exported so far: {dict(_totals(tally))}", flush=True)
        pump.stop()
    return 0


def _totals(tally: Tally) -> dict[str, int]:
    out: dict[str, int] = {}
    for (event, _), n in tally.counts.items():
        out[event] = out.get(event, 0) + n
    return out
