"""`quiver trace ID|ADDRESS`: arguments, the deployment's stores, the output.

Exit status: 0 events or claims found, 1 nothing found in the window, 2 a usage or
AWS error. Endpoints and region come from boto3's usual AWS_* variables, the
bucket, tables and Athena settings from the deployment's (quiver.settings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from quiver.settings import (
    ENV_ATHENA_DATABASE,
    ENV_ATHENA_WORKGROUP,
    ENV_EVENTS_BUCKET,
    Deployment,
    SettingsError,
    deployment_from_env,
)
from quiver.trace.adaptive import ADAPTIVE, affecting
from quiver.trace.athena import DEFAULT_TIMEOUT, AthenaEventReader
from quiver.trace.claims import MAX_MESSAGES, Claim, read_claims
from quiver.trace.reader import EventReader, Progress, no_progress
from quiver.trace.render import Trace, write_json, write_text
from quiver.trace.s3_reader import DEFAULT_MAX_OBJECTS, S3EventReader
from quiver.trace.target import Target, TraceError, Window
from quiver.trace.verdict import recipients
from quiver.units import parse_duration

DEFAULT_SINCE = "3d"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "trace", help="every event of a message or a recipient, in order, and what "
                      "became of each recipient")
    p.add_argument("target", metavar="ID|ADDRESS",
                   help="a message id (exact) or a recipient address (any case)")
    p.add_argument("--since", default=DEFAULT_SINCE, metavar="DURATION",
                   help=f"how far back to look, e.g. 6h, 3d (default {DEFAULT_SINCE})")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--athena", action="store_true",
                     help=f"query Athena (workgroup ${ENV_ATHENA_WORKGROUP}, database "
                          f"${ENV_ATHENA_DATABASE}); the default when the workgroup is set")
    how.add_argument("--s3", action="store_true",
                     help="list and read the events bucket even when Athena is configured")
    p.add_argument("--athena-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"stop the Athena query after this long (default {DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS, metavar="N",
                   help="read at most this many event objects from S3, or stop with an "
                        f"error (default {DEFAULT_MAX_OBJECTS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    try:
        target = Target.parse(args.target)
        try:
            since = parse_duration(args.since)
        except ValueError as exc:
            raise TraceError(f"--since: {exc}") from None
        window = Window.last(since, now=time.time())
        deployment = deployment_from_env(os.environ, required=())
        reader = build_reader(args, deployment)
        trace = run_trace(target, window, reader=reader, deployment=deployment,
                          progress=_progress if sys.stderr.isatty() else no_progress)
    except (TraceError, SettingsError) as exc:
        print(f"quiver trace: {exc}", file=sys.stderr)
        return 2
    (write_json if args.json else write_text)(trace, sys.stdout)
    return 0 if trace.events or trace.recipients else 1


def build_reader(args: argparse.Namespace, deployment: Deployment) -> EventReader:
    import boto3

    session = boto3.session.Session()
    if args.athena or (deployment.athena_workgroup and not args.s3):
        if not deployment.athena_workgroup or not deployment.athena_database:
            raise TraceError(f"--athena needs {ENV_ATHENA_WORKGROUP} and {ENV_ATHENA_DATABASE} "
                             "(the stack's workgroup and Glue database, e.g. quiver and "
                             "quiver_events)")
        if args.athena_timeout <= 0:
            raise TraceError("--athena-timeout must be longer than 0")
        return AthenaEventReader(session.client("athena"), workgroup=deployment.athena_workgroup,
                                 database=deployment.athena_database,
                                 timeout=args.athena_timeout)
    if not deployment.events_bucket:
        raise TraceError(f"no events bucket: set {ENV_EVENTS_BUCKET} (`quiver local` prints "
                         "it; the deployed one is the stack's events bucket)")
    if args.max_objects < 1:
        raise TraceError("--max-objects must be at least 1")
    return S3EventReader(session.client("s3"), bucket=deployment.events_bucket,
                         max_objects=args.max_objects)


def run_trace(target: Target, window: Window, *, reader: EventReader, deployment: Deployment,
              progress: Progress = no_progress, session: Any = None) -> Trace:
    """Read the events and claims of `target` within `window`."""
    if session is None:
        import boto3

        session = boto3.session.Session()
    events = reader.read(target, window, progress=progress)
    read = reader.describe()
    notes = []
    if any(e.get("rcpt") for e in events):
        # The adaptive changes that held it back or slowed it: a second read, of the
        # control events only.
        try:
            events += affecting(events, reader.read(Target.changes_by(ADAPTIVE), window))
            read += f"; adaptive changes: {reader.describe()}"
        except TraceError as exc:
            notes.append(f"adaptive changes not read: {exc}")
    claims: list[Claim] = []
    # The events are the answer; the claims and the backlog only add to it, so a store
    # this operator cannot read becomes a note rather than the end of the trace.
    if deployment.finals_table:
        ids = list(dict.fromkeys([target.value, *(str(e.get("id")) for e in events)]))
        try:
            claims = [c for c in read_claims(session.client("dynamodb"),
                                             table=deployment.finals_table, message_ids=ids)
                      if c.id == target.value or c.rcpt.lower() == target.address]
        except TraceError as exc:
            notes.append(f"final claims not read: {exc}")
        if len(ids) > MAX_MESSAGES:
            notes.append(f"final claims read for the first {MAX_MESSAGES} of {len(ids)} "
                         "messages")
    else:
        notes.append("no finals table configured: final claims not read")
    if deployment.events_queue_url:
        try:
            waiting = _backlog(session.client("sqs"), deployment.events_queue_url)
        except TraceError as exc:
            notes.append(f"events queue not read: {exc}")
            waiting = 0
        if waiting:
            notes.append(f"{waiting} event batches on the events queue are not exported "
                         "yet: the newest events may be missing")
    return Trace(target=target.value, since=window.start_at, until=window.end_at,
                 reader=reader.name, read=read, events=events,
                 recipients=recipients(events, claims), notes=notes)


def _backlog(sqs: Any, queue_url: str) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    except (BotoCoreError, ClientError) as exc:
        raise TraceError(f"events queue: {exc}") from exc
    values = attributes.get("Attributes", {})
    return sum(int(values.get(k, 0)) for k in ("ApproximateNumberOfMessages",
                                               "ApproximateNumberOfMessagesNotVisible"))


def _progress(done: int, total: int, what: str) -> None:
    end = "\n" if done >= total else ""
    print(f"\rread {done}/{total} {what}", end=end, file=sys.stderr, flush=True)
