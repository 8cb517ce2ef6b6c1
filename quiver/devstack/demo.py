"""`quiver demo`: N sample messages through the local stack, then a summary.

Exit status 0 only if every recipient of every message reached a final event and
every object in the events bucket parses as v1 events.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from quiver.analytics.download import download
from quiver.client import OutboundMessage
from quiver.devstack.demo_feedback import FeedbackLoop
from quiver.devstack.export_pump import ExportPump, Tally
from quiver.devstack.injectors import VIA, Injector
from quiver.devstack.progress import Progress
from quiver.devstack.samples import plan
from quiver.devstack.stack import SUPPRESSION_CACHE_TTL, LocalStack
from quiver.event_schema import record_problems
from quiver.events import validate_record
from quiver.export import read_object
from quiver.units import parse_duration

COLUMNS = ("delivered", "deferred", "bounced", "expired", "rejected")
ENQUEUE_CHUNK = 100


# How long the demo waits for the DSNs, complaint reports and one-click POSTs of the
# first round to come back as events (they travel MX → inbound → S3 → queue → intake).
FEEDBACK_TIMEOUT = 90.0


def run_demo(*, root: Path, messages: int, as_json: bool, via: str = "sqs",
             keep: Path | None = None) -> int:
    if messages < 1:
        print("quiver demo: --messages must be at least 1")
        return 2
    stack = LocalStack(root, feedback=True, http_ingress=via == "http")
    print_ = _printer(as_json)
    print_(f"starting the local stack in {root} ...")
    with stack.start():
        assert stack.deployment is not None and stack.dns is not None and stack.mx is not None
        print_(f"egress {stack.describe_egress()}")
        tally = Tally()
        pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                           environ=stack.env())
        pump.start()
        sender = stack.start_sender()
        valid, malformed = plan(messages)
        expected = sum(len(m.to) for m in valid) + len(malformed)
        client = VIA[via](stack)
        print_(f"injecting via {via}")
        started = time.monotonic()
        refused = _enqueue(client, valid, "enqueue ")
        sqs = stack.client("sqs")
        for body in malformed:
            sqs.send_message(QueueUrl=stack.deployment.outbound_queue_url, MessageBody=body)

        timeout = 90 + messages / 20
        first_pass = _wait_for_finals(tally, expected=expected, sender=sender,
                                      started=started, timeout=timeout)
        elapsed = time.monotonic() - started
        # The feedback loop: one-click POSTs, then every DSN, report and click as an
        # event, then a second message to each address acted on.
        assert stack.inbound is not None
        loop = FeedbackLoop(tally=tally, received=stack.mx.received,
                            inbound=stack.inbound.address)
        if sender.poll() is None and tally.finals >= expected:
            print_(f"unsubscribe: {len(loop.click_unsubscribe())} one-click POSTs, "
                   f"{len(loop.mail_unsubscribe())} mailto requests; waiting for bounces, "
                   "complaints and unsubscribes to come back as events ...")
            loop.wait_for_events(timeout=FEEDBACK_TIMEOUT)
            # Every answer the sender cached for these addresses predates their events
            # (it was cached before the first delivery); after the cache's bound it
            # asks the list again, as every sender in a fleet does.
            time.sleep(parse_duration(SUPPRESSION_CACHE_TTL))
            again = loop.again()
            again_started = time.monotonic()
            refused += _enqueue(client, again, "again   ")
            expected += sum(len(m.to) for m in again)
            _wait_for_finals(tally, expected=expected, sender=sender,
                             started=again_started, timeout=timeout)
        sender_exit = stack.stop_sender(sender)
        while pump.drain_once(wait_seconds=0):
            pass
        pump.stop()
        objects, bad_objects = _check_bucket(stack)
        kept = (download(stack.client("s3"), bucket=stack.deployment.events_bucket, to=keep)
                if keep is not None else None)
        by_source_ip = Counter(str(r["peer_ip"]) for r in stack.mx.received())
        dns_kind = stack.dns.kind
        egress = stack.egress_mode
        intake = stack.intakes.outcomes() if stack.intakes is not None else {}

    summary = _summary(
        tally=tally, messages=messages, expected=expected, first_pass=first_pass or elapsed,
        elapsed=elapsed, objects=objects, bad_objects=bad_objects, refused=refused,
        bucket=stack.deployment.events_bucket, sender_exit=sender_exit,
        by_source_ip=dict(sorted(by_source_ip.items())), dns=dns_kind, egress=egress,
    )
    summary.update(loop.summary())
    summary["kept"] = (None if kept is None or keep is None else
                       {"dir": str(keep), "objects": kept.objects + kept.skipped,
                        "bytes": kept.bytes})
    summary["intake"] = intake
    summary["via"] = via
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        _print_table(summary, root)
    ok = (summary["final"] == expected and not bad_objects and sender_exit == 0
          and not summary["second_round_not_suppressed"])
    return 0 if ok else 1


def _enqueue(client: Injector, messages: list[OutboundMessage], label: str) -> int:
    """Inject in batches with a progress bar; how many were refused."""
    bar = Progress(label, len(messages))
    refused = 0
    for i in range(0, len(messages), ENQUEUE_CHUNK):
        refused += client.inject(messages[i:i + ENQUEUE_CHUNK])
        bar.update(min(len(messages), i + ENQUEUE_CHUNK))
    bar.finish(len(messages))
    return refused


def _wait_for_finals(tally: Tally, *, expected: int, sender: subprocess.Popen[bytes],
                     started: float, timeout: float) -> float | None:
    """Wait until `expected` recipients have a final event, the sender exits or
    `timeout` passes; the time the first pass took (every recipient attempted once)."""
    bar = Progress("deliver ", expected)
    first_pass: float | None = None
    before = tally.finals
    while time.monotonic() - started < timeout:
        finals = tally.finals
        if first_pass is None and _first_attempts(tally) >= expected:
            first_pass = time.monotonic() - started
        rate = (finals - before) / max(1e-6, time.monotonic() - started)
        bar.update(finals, f"final  {rate:.0f}/s")
        if finals >= expected or sender.poll() is not None:
            break
        time.sleep(0.1)
    bar.finish(tally.finals, f"final in {time.monotonic() - started:.1f}s")
    return first_pass


def _printer(quiet: bool) -> Any:
    import sys

    def print_(text: str) -> None:
        print(text, file=sys.stderr if quiet else sys.stdout)

    return print_


def _first_attempts(tally: Tally) -> int:
    """Records of first attempts: every recipient has one once the first pass is done."""
    with tally.lock:
        return tally.first_attempts


def _check_bucket(stack: LocalStack) -> tuple[int, list[str]]:
    """Every object under events/ must parse as v1 records that the schema (and so the
    Glue table) reads: every field a column of a compatible type."""
    assert stack.deployment is not None
    s3 = stack.client("s3")
    bucket = stack.deployment.events_bucket
    objects, bad = 0, []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix="events/"):
        for item in page.get("Contents", []):
            objects += 1
            data = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            try:
                for record in read_object(data):
                    validate_record(record)
                    if problems := record_problems(record):
                        raise ValueError("; ".join(problems))
            except Exception as exc:
                bad.append(f"{item['Key']}: {exc}")
    return objects, bad


def _summary(*, tally: Tally, messages: int, expected: int, first_pass: float, elapsed: float,
             objects: int, bad_objects: list[str], refused: int, bucket: str,
             sender_exit: int, by_source_ip: dict[str, int], dns: str,
             egress: str) -> dict[str, Any]:
    by_domain: dict[str, dict[str, int]] = {}
    totals: Counter[str] = Counter()
    for (event, domain), n in tally.counts.items():
        by_domain.setdefault(domain, dict.fromkeys(COLUMNS, 0))[event] = n
        totals[event] += n
    return {
        "messages": messages,
        "recipients": expected,
        "final": tally.finals,
        **{c: totals[c] for c in COLUMNS},
        "msgs_per_s": round(messages / max(first_pass, 1e-6), 1),
        "first_pass_s": round(first_pass, 2),
        "elapsed_s": round(elapsed, 2),
        "event_objects": objects,
        "invalid_event_objects": bad_objects,
        "events_bucket": f"s3://{bucket}/events/",
        "refused_by_client": refused,
        "sender_exit": sender_exit,
        "by_domain": dict(sorted(by_domain.items())),
        "by_source_ip": by_source_ip,
        "dns": dns,
        "egress": egress,
    }


def _print_table(s: dict[str, Any], root: Path) -> None:
    header = f"{'domain':<18}" + "".join(f"{c:>11}" for c in COLUMNS)
    print()
    print(header)
    print("-" * len(header))
    for domain, counts in s["by_domain"].items():
        print(f"{domain:<18}" + "".join(f"{counts[c]:>11}" for c in COLUMNS))
    print("-" * len(header))
    print(f"{'total':<18}" + "".join(f"{s[c]:>11}" for c in COLUMNS))
    print()
    print(f"messages {s['messages']}, recipients {s['recipients']}, final {s['final']}")
    print(f"first pass {s['first_pass_s']} s ({s['msgs_per_s']} msg/s); "
          f"all final after {s['elapsed_s']} s (retries and expiry included)")
    print(f"deliveries by egress IP ({s['egress']}): {s['by_source_ip']}")
    print(f"after delivery: {s['async_bounced']} async bounces, {s['complaints']} complaints, "
          f"{s['unsubscribed']} one-click unsubscribes (took {s['feedback_wait_s']} s); "
          f"a second message to each of {s['second_round']} addresses that bounced hard, "
          f"complained or unsubscribed: {s['second_round'] - len(s['second_round_not_suppressed'])}"
          " suppressed without an SMTP attempt")
    if s["second_round_not_suppressed"]:
        print(f"NOT suppressed: {s['second_round_not_suppressed'][:5]}")
    print(f"event files: {s['event_objects']} objects in {s['events_bucket']} "
          f"(local moto server; logs in {root / 'logs'})")
    if s["kept"]:
        print(f"kept: {s['kept']['objects']} event objects in {s['kept']['dir']} (query them: "
              f"quiver events query --dir {s['kept']['dir']} --saved outcome_rates_hourly)")
    if s["invalid_event_objects"]:
        print(f"INVALID event objects: {s['invalid_event_objects'][:5]}")
