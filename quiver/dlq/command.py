"""`quiver dlq show|redrive --queue outbound|events`: arguments and output.

Exit status: 0 done; 1 a redrive that could not move everything it took (the
output says what is where); 2 a usage or AWS error. Queues come from the
deployment's settings, endpoints and region from boto3's usual AWS_* variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from quiver.dlq.queues import QUEUE_NAMES, DlqError, resolve
from quiver.dlq.redrive import Moved, redrive
from quiver.dlq.show import DEFAULT_SAMPLE, Shown, show
from quiver.settings import SettingsError, deployment_from_env

_SHOWN_TEXT = 100  # characters of a reason in the text output


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dlq", help="dead-letter queues: what is in them, and moving it back")
    dsub = p.add_subparsers(dest="dlq_command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = dsub.add_parser(name, help=help_text)
        c.add_argument("--queue", choices=QUEUE_NAMES, default="outbound",
                       help="the outbound queue's DLQ (default) or the events queue's")
        c.add_argument("--json", action="store_true", help="print one JSON object")
        c.set_defaults(func=cmd_dlq)
        return c

    s = command("show", "depth, oldest, reasons and a sample; deletes nothing")
    s.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                   help=f"messages to look at (default {DEFAULT_SAMPLE})")
    r = command("redrive", "move messages back to their source queue, bodies unchanged "
                           "(ids and attempt counts kept)")
    r.add_argument("--max", type=int, default=None, metavar="N", dest="max_messages",
                   help="move at most N (default: as many as the DLQ holds when it starts)")


def cmd_dlq(args: argparse.Namespace) -> int:
    where = f"quiver dlq {args.dlq_command}"
    if args.dlq_command == "show" and args.sample < 1:
        print(f"{where}: --sample must be at least 1", file=sys.stderr)
        return 2
    if args.dlq_command == "redrive" and args.max_messages is not None and args.max_messages < 1:
        print(f"{where}: --max must be at least 1", file=sys.stderr)
        return 2
    import boto3

    try:
        deployment = deployment_from_env(os.environ, required=())
        sqs = boto3.session.Session().client("sqs")
        pair = resolve(sqs, deployment, args.queue)
        if args.dlq_command == "show":
            shown = show(sqs, pair, sample=args.sample)
            if args.json:
                print(json.dumps(shown.as_json(), indent=2, ensure_ascii=False))
            else:
                write_shown(shown)
            return 0
        moved = redrive(sqs, pair, max_messages=args.max_messages,
                        progress=_progress if sys.stderr.isatty() else lambda m: None)
    except (DlqError, SettingsError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(moved.as_json(), indent=2))
    else:
        write_moved(moved, pair.dlq_url, pair.source_url)
    return 1 if moved.failed else 0


def write_shown(shown: Shown) -> None:
    print(f"{shown.queue} DLQ {shown.dlq_url}: {shown.visible} messages"
          f" ({shown.in_flight} in flight); source {shown.source_url}")
    oldest = shown.oldest
    if oldest is not None:
        age = time.time() - oldest["sent_timestamp"]
        of = "of all" if len(shown.sample) >= shown.visible else f"of {len(shown.sample)} sampled"
        print(f"oldest ({of}): sent {oldest['sent_at']} ({_age(age)} ago)")
    if not shown.sample:
        return
    print("reasons (sampled):")
    for reason, count in shown.reasons():
        print(f"  {count:>4}  {_cut(reason)}")
    print("sample:")
    for m in shown.sample:
        if shown.queue == "outbound":
            what = (f"id {m['id']} attempt {m['attempt']} to {', '.join(m['recipients'])}"
                    + (f" (invalid: {_cut(m['invalid'])})" if "invalid" in m else ""))
        elif "error" in m:
            what = "not an event batch"
        else:
            more = f" +{m['more_ids']} more" if m["more_ids"] else ""
            what = (f"batch {m['batch']}: {m['records']} records "
                    f"{json.dumps(m['events'])}, ids {', '.join(m['ids'])}{more}")
        print(f"  {m['sqs_message_id']} sent {m['sent_at']}: {what}")


def write_moved(moved: Moved, dlq_url: str, source_url: str) -> None:
    print(f"moved {moved.moved} of {moved.requested} from {dlq_url} to {source_url}")
    if moved.not_deleted:
        print(f"{moved.not_deleted} were sent back but are still in the DLQ too: a second "
              "redrive would send them again; the finals table keeps their final events once")
    for failure in moved.failed:
        print(f"failed: {failure}")


def _progress(moved: Moved) -> None:
    print(f"\rmoved {moved.moved}/{moved.requested}", end="", file=sys.stderr, flush=True)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_TEXT else text[:_SHOWN_TEXT - 1] + "…"
