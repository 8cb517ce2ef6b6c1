"""`quiver status` and `quiver top`: the fleet's live status from the senders table.

The table comes from --table or $QUIVER_SENDERS_TABLE, the endpoint and region
from boto3's usual AWS_* variables, so the same command works from a laptop on
the deployed stack and on the local stack; the tasks themselves are never
contacted. Exit status: 0 shown, 2 a usage or AWS error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quiver.settings import ENV_CONTROLS_TABLE, ENV_SENDERS_TABLE

if TYPE_CHECKING:
    from quiver.status.fleet import Fleet

REFRESH = 2.0


def fleet_reader(table: str) -> Callable[[], Fleet]:
    import boto3

    from quiver.status.fleet import aggregate
    from quiver.storage.dynamo import read_senders

    client = boto3.session.Session().client("dynamodb")
    return lambda: aggregate(read_senders(client, table), now=time.time())


def _table(args: argparse.Namespace, where: str) -> str | None:
    table: str = args.table or os.environ.get(ENV_SENDERS_TABLE, "")
    if not table:
        print(f"{where}: no table: pass --table or set {ENV_SENDERS_TABLE} (`quiver local` "
              "prints it; the deployed one is the stateful stack's senders table)",
              file=sys.stderr)
    return table or None


def cmd_status(args: argparse.Namespace) -> int:
    from quiver.status.render import render
    from quiver.storage.base import StorageError

    table = _table(args, "quiver status")
    if table is None:
        return 2
    if args.limit < 1:
        print("quiver status: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        fleet = fleet_reader(table)()
    except StorageError as exc:
        print(f"quiver status: cannot read {table}: {exc}", file=sys.stderr)
        return 2
    try:
        warmup = warmup_rows()
    except StorageError as exc:
        print(f"quiver status: cannot read the warm-up counts: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = fleet.as_json()
        if warmup is not None:
            out["warmup"] = warmup[1]
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print("\n".join(render(fleet, max_queues=args.limit)))
    if warmup is not None:
        from quiver.warmup.describe import status_lines

        print("\n".join(status_lines(warmup[1], warmup[0])))
    return 0


def warmup_rows() -> tuple[str, list[dict[str, Any]]] | None:
    """Today's (UTC) warm-up rows from the controls table ($QUIVER_CONTROLS_TABLE, where
    senders share them); None without the table."""
    table = os.environ.get(ENV_CONTROLS_TABLE, "")
    if not table:
        return None
    import asyncio
    import datetime as dt

    import boto3

    from quiver.storage.dynamo_warmup import DynamoWarmup
    from quiver.warmup.describe import status_rows

    date = dt.datetime.now(dt.UTC).date().isoformat()
    store = DynamoWarmup(boto3.session.Session().client("dynamodb"), table)
    uses, states = asyncio.run(store.today(date=date))
    return date, status_rows(uses, states, date)


def cmd_top(args: argparse.Namespace) -> int:
    from quiver.status.top import Top

    table = _table(args, "quiver top")
    if table is None:
        return 2
    if args.iterations is not None and args.iterations < 1:
        print("quiver top: --iterations must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.interval < 3600:
        print("quiver top: --interval must be above 0 and below an hour", file=sys.stderr)
        return 2
    top = Top(read=fleet_reader(table), interval=args.interval, sort=args.sort,
              iterations=args.iterations)
    return top.run()


def add_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="the sender fleet's live status: tasks, ready queues, proxies")
    status.add_argument("--table", help=f"the senders table (default ${ENV_SENDERS_TABLE})")
    status.add_argument("--json", action="store_true",
                        help="print the aggregate and every task's record as JSON")
    status.add_argument("--limit", type=int, default=50, metavar="N",
                        help="show the N deepest queues (default 50)")
    status.set_defaults(func=cmd_status)

    top = sub.add_parser(
        "top", help="the fleet's status, redrawn live (keys: d depth, r deferral rate, q quit)")
    top.add_argument("--table", help=f"the senders table (default ${ENV_SENDERS_TABLE})")
    top.add_argument("--interval", type=float, default=REFRESH, metavar="SECONDS",
                     help=f"seconds between refreshes (default {REFRESH:g}); the records "
                          "themselves change at each sender heartbeat")
    top.add_argument("--sort", choices=("depth", "deferrals"), default="depth",
                     help="initial order of the queues (default depth)")
    top.add_argument("--iterations", type=int, metavar="N",
                     help="stop after N refreshes (default: until q or Ctrl-C)")
    top.set_defaults(func=cmd_top)


ENV_STATUS_PORT = "QUIVER_STATUS_PORT"
ENV_STATUS_BIND = "QUIVER_STATUS_BIND"


def _port(text: str) -> int | None:
    if text.strip().lower() == "off":
        return None
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535 (0: any free one) or "
                                         f"'off', got {text!r}")
    return int(text)


def _stall(text: str) -> float:
    from quiver.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if seconds < 5:
        raise argparse.ArgumentTypeError(f"expected at least 5s (the loop ticks every "
                                         f"second), got {text!r}")
    return seconds


def add_sender_arguments(sender: argparse.ArgumentParser) -> None:
    """The sender's status endpoint options."""
    from quiver.status.liveness import DEFAULT_STALL
    from quiver.status.server import DEFAULT_PORT

    sender.add_argument(
        "--status-port", type=_port, metavar="PORT|off",
        # A string default goes through `type` too: a bad variable is a usage error.
        default=os.environ.get(ENV_STATUS_PORT, str(DEFAULT_PORT)),
        help=f"serve GET /healthz and /status on this port (default ${ENV_STATUS_PORT} or "
             f"{DEFAULT_PORT}; 0: any free port, logged; off: none)")
    sender.add_argument(
        "--status-bind", default=os.environ.get(ENV_STATUS_BIND, "127.0.0.1"),
        metavar="ADDRESS",
        help=f"address to serve it on (default ${ENV_STATUS_BIND} or 127.0.0.1; the "
             "container uses 0.0.0.0, reachable by no security group rule)")
    sender.add_argument(
        "--loop-stall", type=_stall, default=DEFAULT_STALL, metavar="DURATION",
        help=f"/healthz answers 503 when the event loop has not run for this long "
             f"(default {DEFAULT_STALL:g}s)")
