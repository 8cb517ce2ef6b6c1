"""`quiver ctl pause|resume|bounce|cancel|stop|start|list`: arguments, identity, and
the AWS store and events queue.

The table comes from --table or $QUIVER_CONTROLS_TABLE, the events queue from
$QUIVER_EVENTS_QUEUE_URL, endpoint and region from boto3's usual AWS_* variables,
so the same command works on the local stack. `--config` (a policy file) checks
that the pool, source and provider named exist. Exit status: 0 done, 1 nothing
matched or the change's event was not recorded, 2 a usage or AWS error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import socket
import sys
import time
from typing import Any

from quiver.controls import admin
from quiver.controls.model import FIELDS, ControlError, Kind, Selector
from quiver.settings import ENV_CONTROLS_TABLE, ENV_EVENTS_QUEUE_URL
from quiver.storage.base import StorageError
from quiver.units import parse_duration

# An admin bounce without --for lasts this long: long enough for queued mail to come
# back through the queue (a deferred message reappears at least every 15 minutes).
DEFAULT_BOUNCE_FOR = 3600.0


class _Usage(ValueError):
    pass


def caller_identity(session: Any) -> str:
    """Who is asking: the AWS caller's ARN (STS GetCallerIdentity) if credentials
    answer, else $USER@host."""
    from botocore.config import Config

    try:
        sts = session.client("sts", config=Config(connect_timeout=3, read_timeout=5,
                                                  retries={"max_attempts": 1}))
        return str(sts.get_caller_identity()["Arn"])
    except Exception:  # no credentials, no network: the local identity will do
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return f"{user}@{socket.gethostname()}"


def cmd_ctl(args: argparse.Namespace) -> int:
    where = f"quiver ctl {args.action}"
    table = args.table or os.environ.get(ENV_CONTROLS_TABLE, "")
    if not table:
        print(f"{where}: no table: pass --table or set {ENV_CONTROLS_TABLE} (`quiver local` "
              "prints it; the deployed one is the stateful stack's controls table)",
              file=sys.stderr)
        return 2
    queue_url = os.environ.get(ENV_EVENTS_QUEUE_URL, "")
    if args.action != "list" and not queue_url:
        print(f"{where}: {ENV_EVENTS_QUEUE_URL} is not set: every change is recorded as a "
              "`control` event on the events queue", file=sys.stderr)
        return 2
    now = time.time()
    try:
        selector = _selector(args)
        duration = _duration(args)
        if getattr(args, "config", None) and selector is not None:
            _check_names(args.config, selector)
    except (_Usage, ControlError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2

    import boto3

    from quiver.storage.aws import BotoEventSink
    from quiver.storage.dynamo import DynamoControls

    session = boto3.session.Session()
    store = DynamoControls(session.client("dynamodb"), table)
    try:
        if args.action == "list":
            return asyncio.run(admin.list_controls(store, now=now, as_json=args.json,
                                                   include_lapsed=args.lapsed, out=sys.stdout))
        events = BotoEventSink(session.client("sqs"), queue_url)
        who = caller_identity(session)
        if args.action in ("pause", "bounce", "stop"):
            kind: Kind = args.action
            return asyncio.run(admin.add(
                store, events, kind=kind, selector=selector or Selector(), reason=args.reason,
                who=who, now=now, duration=duration, out=sys.stdout, err=sys.stderr))
        removing: Kind | None = ("pause" if args.action == "resume" else
                                 "stop" if args.action == "start" else None)
        return asyncio.run(admin.remove(
            store, events, kind=removing, selector=selector,
            control_id=getattr(args, "id", None), who=who, now=now, out=sys.stdout,
            err=sys.stderr))
    except ControlError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"{where}: the controls table {table!r} or the events queue failed: {exc}; "
              "check `quiver ctl list` and run it again", file=sys.stderr)
        return 2


def _selector(args: argparse.Namespace) -> Selector | None:
    values = {f: getattr(args, f, None) for f in FIELDS}
    if all(v is None for v in values.values()):
        if args.action == "resume" and getattr(args, "id", None) is None:
            raise _Usage("name the pause to lift: the selector it was given "
                         "(--domain ...) or --id (see `quiver ctl list`)")
        return None
    if args.action == "resume" and getattr(args, "id", None) is not None:
        raise _Usage("--id or a selector, not both")
    return Selector.of(values)


def _duration(args: argparse.Namespace) -> float | None:
    text = getattr(args, "for_", None)
    if text is None:
        return DEFAULT_BOUNCE_FOR if args.action == "bounce" else None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise _Usage(f"--for {text!r}: {exc}") from None
    if seconds <= 0:
        raise _Usage(f"--for {text!r}: must be more than 0")
    return seconds


def _check_names(config: str, selector: Selector) -> None:
    from quiver.policy import PolicyError
    from quiver.policy.source import read_policy

    try:
        policy = read_policy(config)[0]
    except PolicyError as exc:
        raise _Usage(f"--config {config}: {exc}") from None
    known: dict[str, set[str]] = {"pool": set(policy.pools), "source": set(policy.sources),
                                  "provider": set(policy.providers)}
    for name, names in known.items():
        value = getattr(selector, name)
        if value is not None and value not in names:
            raise _Usage(f"--{name} {value!r}: not in the policy (known: "
                         f"{', '.join(sorted(names)) or 'none'})")


def add_parser(sub: Any) -> None:
    """The `ctl` command and its subcommands, on the CLI's subparsers."""
    ctl = sub.add_parser(
        "ctl", help="operator controls: pause, resume, bounce, cancel, stop, start, list",
        description="Cluster-wide controls in the controls table ($QUIVER_CONTROLS_TABLE), "
                    "in force on every sender within [controls] poll (2 s) plus a read. "
                    "Each change is recorded as a `control` event ($QUIVER_EVENTS_QUEUE_URL).")
    csub = ctl.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str, *, selector: bool) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = csub.add_parser(name, help=help_text,
                                                     description=help_text)
        p.add_argument("--table", help="the controls table (default $QUIVER_CONTROLS_TABLE)")
        if selector:
            for field in FIELDS:
                p.add_argument(f"--{field}", help=f"only mail of this {field}")
            p.add_argument("--config", metavar="POLICY",
                           help="policy file: check that --pool/--source/--provider exist")
        p.set_defaults(func=cmd_ctl)
        return p

    pause = command("pause", "hold mail of the selector (any combination of fields): it "
                             "waits in the queue, never bounced, no attempt counted",
                    selector=True)
    pause.add_argument("--for", dest="for_", metavar="DURATION",
                       help="lapse after this long (30m, 4h; default: until resumed)")
    pause.add_argument("--reason", default="", help="why, for people and events")
    resume = command("resume", "lift the pause of exactly this selector (or --id)",
                     selector=True)
    resume.add_argument("--id", help="the pause's id (`quiver ctl list`)")
    bounce = command("bounce", "admin bounce: queued and newly received mail of the "
                               "selector gets a `bounced` event, no SMTP attempt",
                     selector=True)
    bounce.add_argument("--for", dest="for_", metavar="DURATION",
                        help="how long newly received mail is bounced too (default 1h)")
    bounce.add_argument("--reason", required=True, help="why (on every bounced event)")
    cancel = command("cancel", "lift any control by its id (ends an admin bounce early)",
                     selector=False)
    cancel.add_argument("id", help="the control's id (`quiver ctl list`)")
    stop = command("stop", "EMERGENCY STOP: no sender starts a connection or a "
                           "transaction; autoscaling does not undo it", selector=False)
    stop.add_argument("--for", dest="for_", metavar="DURATION",
                      help="lapse after this long (default: until `quiver ctl start`)")
    stop.add_argument("--reason", default="", help="why, for people and events")
    command("start", "lift the emergency stop", selector=False)
    lst = command("list", "the controls in force: who, when, why, until when",
                  selector=False)
    lst.add_argument("--json", action="store_true", help="as JSON")
    lst.add_argument("--lapsed", action="store_true",
                     help="include controls past their expiry not yet removed")
