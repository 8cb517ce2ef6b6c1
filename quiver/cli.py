"""`quiver` command line: sender, enqueue, suppression list, operator controls, local
stack, demo, config check.

A proxy node's haproxy.cfg is the proxy tier's: `python -m proxy_tier render`."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quiver.policy import Policy


def _nameservers(spec: str | None) -> list[tuple[str, int]] | None:
    if not spec:
        return None
    out = []
    for item in spec.split(","):
        host, _, port = item.strip().partition(":")
        out.append((host, int(port or 53)))
    return out


def cmd_sender(args: argparse.Namespace) -> int:
    import boto3
    from botocore.config import Config

    from quiver.dkim import DkimError
    from quiver.policy import PolicyError
    from quiver.policy.reload import PolicySource
    from quiver.policy.source import policy_reader, read_policy
    from quiver.returnpath import KeyRingError
    from quiver.sender.collector import tune_collector
    from quiver.settings import SettingsError, deployment_from_env
    from quiver.status.server import StatusBindError
    from quiver.wiring import build_sender, serve

    logging.basicConfig(
        level=os.environ.get("QUIVER_LOG_LEVEL", "INFO"),
        format='{"level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}',
    )
    session = boto3.session.Session()
    try:
        deployment = deployment_from_env(os.environ)
        # Short timeouts: a poll that hangs must not hold the process past its stop.
        ssm_config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
        # One SSM or S3 client per process, made on first use.
        ssm_client = functools.cache(lambda: session.client("ssm", config=ssm_config))
        s3_client = functools.cache(lambda: session.client("s3", config=ssm_config))
        # One reader for the start and every poll: an S3 reader keeps the ETag it saw.
        reader = policy_reader(args.config, ssm=ssm_client, s3=s3_client)
        policy, policy_dir, text = read_policy(args.config, read=reader)
        for warning in policy.warnings:
            logging.getLogger("quiver").warning("policy: %s", warning)
        source = PolicySource(
            origin=args.config, text=text, interval=args.policy_poll,
            read=reader,
        )
        sender = build_sender(
            policy=policy, policy_dir=policy_dir, deployment=deployment, session=session,
            nameservers=_nameservers(args.nameserver or os.environ.get("QUIVER_NAMESERVERS")),
            policy_source=source,
            status_address=None if args.status_port is None
            else (args.status_bind, args.status_port),
            loop_stall=args.loop_stall,
        )
    except (PolicyError, SettingsError, DkimError, KeyRingError) as exc:
        print(f"quiver sender: {exc}", file=sys.stderr)
        return 2
    except StatusBindError as exc:
        print(f"quiver sender: {exc} (choose another --status-port, or 'off')",
              file=sys.stderr)
        return 2
    tune_collector()
    _run(serve(sender))
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from quiver.client import OutboundMessage, QuiverClient
    from quiver.content import ContentError, check_size
    from quiver.envelope import EnvelopeError
    from quiver.policy import Content, PolicyError
    from quiver.policy.source import read_policy
    from quiver.settings import SettingsError, deployment_from_env

    try:
        deployment = deployment_from_env(os.environ)
        content = read_policy(args.config)[0].content if args.config else Content()
    except (SettingsError, PolicyError) as exc:
        print(f"quiver enqueue: {exc}", file=sys.stderr)
        return 2
    try:
        # By its size first: a file over the limit is never read into memory.
        check_size(os.stat(args.file).st_size, max_size=content.max_message_size)
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"quiver enqueue: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except ContentError as exc:
        print(f"quiver enqueue: invalid message: raw: {exc}", file=sys.stderr)
        return 2
    message_id = args.id or f"cli-{os.getpid()}-{int.from_bytes(os.urandom(6), 'big'):x}"
    client = QuiverClient.from_settings(deployment, max_message_size=content.max_message_size,
                                        long_lines=content.long_lines)
    try:
        sqs_id = client.enqueue(OutboundMessage(
            id=message_id, sender=args.sender, to=args.to, raw=raw, pool=args.pool,
            tenant=args.tenant, campaign=args.campaign,
        ))
    except EnvelopeError as exc:
        print(f"quiver enqueue: invalid message: {exc}", file=sys.stderr)
        return 2
    print(f"enqueued {message_id} (SQS message {sqs_id})")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from quiver.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(f"warning: {warning}")
    print(
        f"{args.file}: ok ({len(policy.sources)} sources, {len(policy.pools)} pools, "
        f"{len(policy.throttles)} throttles, {len(policy.dkim)} DKIM keys)"
    )
    if policy.warmup.enabled:
        import datetime as dt

        from quiver.warmup.describe import plan_lines

        print("\n".join(plan_lines(policy.warmup, dt.datetime.now(dt.UTC).date())))
    print(adaptive_summary(policy))
    for tenant in policy.tenants.tenants.values():
        print(f"tenant {tenant.name}: domains {', '.join(tenant.domains)}; "
              f"{tenant.max_connections} connections, "
              f"{tenant.max_messages_per_second:g} msg/s per listener"
              + (f"; IAM roles {', '.join(tenant.iam_roles)}" if tenant.iam_roles else ""))
    return 0


def adaptive_summary(policy: Policy) -> str:
    """What the adaptive engine will do under `policy`: its rules per provider, and the
    providers whose reduce rules have no max_rate to cut (they only log)."""
    from quiver.policy.adaptive import starter_rules
    from quiver.scheduler.throttle import Destination, resolve

    adaptive = policy.adaptive
    if not adaptive.enabled:
        return "adaptive: off ([adaptive] enabled = false)"
    starter = {r.name for r in starter_rules()}
    own = sum(1 for r in adaptive.rules if r.name not in starter)
    by_provider: dict[str, int] = {}
    for rule in adaptive.rules:
        by_provider[rule.provider] = by_provider.get(rule.provider, 0) + 1
    line = (f"adaptive: on, {len(adaptive.rules)} response rules ({own} from this policy, "
            f"{len(adaptive.rules) - own} starter): "
            + ", ".join(f"{p} {n}" for p, n in sorted(by_provider.items())))
    no_max = sorted({r.provider for r in adaptive.rules
                     if r.action == "reduce" and r.provider != "*"
                     and resolve(policy.throttles, Destination(
                         source="*", site="", domain="", provider=r.provider,
                         mx_hosts=())).max_rate is None})
    if no_max:
        line += ("\nadaptive: no throttle sets max_rate for " + ", ".join(no_max)
                 + ": their reduce rules have no rate to cut (suspend rules still act)")
    return line


def cmd_return_path_rotate(args: argparse.Namespace) -> int:
    import time

    from quiver.returnpath import KeyRingError
    from quiver.returnpath.admin import rotate_file, rotate_secret

    now = time.time()
    try:
        if args.secret_id:
            import boto3

            ring = rotate_secret(boto3.client("secretsmanager"), args.secret_id, now=now,
                                 activate_in=args.activate_in)
            where = f"secret {args.secret_id}"
        else:
            ring = rotate_file(Path(args.file), now=now, activate_in=args.activate_in)
            where = args.file
    except KeyRingError as exc:
        print(f"quiver return-path rotate: {exc}", file=sys.stderr)
        return 1
    newest = max(ring.keys, key=lambda k: k.id)
    when = ("from now on" if newest.created <= now
            else f"in {newest.created - now:.0f} s, when every reader has it")
    retiring = [k.id for k in ring.keys if k.retired is not None]
    print(f"{where}: key {newest.id} signs {when}; retired keys verify for 30 days "
          f"after retirement: {retiring or 'none'}")
    return 0


def _devstack_missing(command: str) -> int:
    # The sender image leaves the dev stack out; say so instead of a traceback.
    print(f"error: `quiver {command}` needs the dev stack (quiver.devstack), which this "
          "installation leaves out (the sender image does); run it from a checkout "
          "installed with `bash scripts/setup.sh`", file=sys.stderr)
    return 2


def cmd_local(args: argparse.Namespace) -> int:
    try:
        from quiver.devstack.run import run_local
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("quiver.devstack"):
            raise
        return _devstack_missing("local")

    return run_local(
        root=Path(args.dir), sender=not args.no_sender,
        dns_file=Path(args.dns) if args.dns else None,
        policy_file=Path(args.policy) if args.policy else None,
        unsubscribe=args.unsubscribe, feedback=args.feedback,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from quiver.devstack.demo import run_demo
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("quiver.devstack"):
            raise
        return _devstack_missing("demo")

    return run_demo(root=Path(args.dir), messages=args.messages, as_json=args.json,
                    via=args.via, keep=Path(args.keep) if args.keep else None)


# `quiver demo --via`: the ingress paths of quiver.devstack.injectors.VIA (named here
# so that the CLI imports without the dev stack).
DEMO_PATHS = ("sqs", "http", "smtp")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quiver", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sender", help="deliver messages from the outbound queue")
    s.add_argument("--config", required=True, help="policy file, ssm:<parameter name> or s3://<bucket>/<key>")
    s.add_argument("--nameserver", help="DNS server(s) host:port[,host:port] (default: system)")
    s.add_argument("--policy-poll", type=float, default=30.0, metavar="SECONDS",
                   help="re-read the policy this often; throttles and retry apply live "
                        "(default 30; 0: never)")
    from quiver.status.command import add_sender_arguments

    add_sender_arguments(s)
    s.set_defaults(func=cmd_sender)

    e = sub.add_parser("enqueue", help="enqueue a rendered message (.eml)")
    e.add_argument("--from", dest="sender", required=True, metavar="ADDRESS",
                   help="envelope sender (MAIL FROM); '' for the null reverse-path <> "
                        "(delivery status notifications and other auto-replies)")
    e.add_argument("--to", action="append", required=True, metavar="ADDRESS",
                   help="a recipient (RCPT TO); repeat for more")
    e.add_argument("--pool", help="egress pool (default: the policy's default_pool)")
    e.add_argument("--tenant", help="tenant name, copied onto every event")
    e.add_argument("--campaign", help="campaign name, copied onto every event")
    e.add_argument("--id", help="message id (default: generated)")
    e.add_argument("--config", help="policy file whose [content] rules (max_message_size, "
                   "long_lines) to check against (default: the defaults, 40MiB, reencode)")
    e.add_argument("file", help="the complete RFC 5322 message (.eml)")
    e.set_defaults(func=cmd_enqueue)

    from quiver.suppression.command import add_parser as add_suppression_parser

    add_suppression_parser(sub)
    from quiver.trace.command import add_parser as add_trace_parser

    add_trace_parser(sub)
    from quiver.dlq.command import add_parser as add_dlq_parser

    add_dlq_parser(sub)

    from quiver.status.command import add_parser as add_status_parser

    add_status_parser(sub)

    from quiver.controls.command import add_parser as add_ctl_parser

    add_ctl_parser(sub)
    from quiver.proxy.command import add_parser as add_proxy_parser

    add_proxy_parser(sub)

    from quiver.tenants.command import add_parser as add_keys_parser

    add_keys_parser(sub)
    from quiver.preflight.command import add_parser as add_preflight_parser

    add_preflight_parser(sub)
    from quiver.analytics.command import add_parser as add_events_parser

    add_events_parser(sub)
    from quiver.ingress.smtp_command import add_parser as add_ingress_parser

    add_ingress_parser(sub)

    c = sub.add_parser("config", help="policy tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a policy file; list every problem")
    check.add_argument("file", help="the policy TOML file")
    check.set_defaults(func=cmd_config_check)

    rp = sub.add_parser("return-path", help="signed return paths (VERP): key rotation")
    rpsub = rp.add_subparsers(dest="return_path_command", required=True)
    rotate = rpsub.add_parser(
        "rotate", help="add a key that signs from now on; retire the one that signed "
                       "(it verifies for 30 more days); drop keys past that")
    where = rotate.add_mutually_exclusive_group(required=True)
    where.add_argument("--secret-id", help="the Secrets Manager secret holding the ring "
                       "(policy return_path.key_secret); created if missing")
    where.add_argument("--file", help="a key ring file (policy return_path.key_file); "
                       "created if missing")
    rotate.add_argument("--activate-in", type=float, default=900.0, metavar="SECONDS",
                        help="the new key signs this long from now, once every sender and "
                             "intake has read it (they re-read every 5 minutes; default "
                             "900); the old key signs until then")
    rotate.set_defaults(func=cmd_return_path_rotate)

    local = sub.add_parser("local", help="start the embedded local stack and keep it up")
    local.add_argument("--dir", default=".quiver/local",
                       help="where the stack keeps its files: env.sh, policy.toml, keys, "
                            "logs, the MX's mail (default .quiver/local)")
    local.add_argument("--no-sender", action="store_true",
                       help="start everything but the sender and print the command that "
                            "runs one, to start, kill and restart by hand")
    local.add_argument("--dns", metavar="FILE",
                       help="extra DNS records to serve beside the demo zone (TOML: "
                            "[[record]] name, type = MX|A|AAAA|TXT, value, preference)")
    local.add_argument("--policy", metavar="FILE",
                       help="a policy fragment merged over the generated policy: tables "
                            "key by key, arrays (throttles, dkim) replaced")
    local.add_argument("--unsubscribe", action="store_true",
                       help="serve the one-click unsubscribe endpoint on loopback HTTP and "
                            "add List-Unsubscribe to the demo domains' mail that has none")
    local.add_argument("--feedback", action="store_true",
                       help="the whole feedback loop (implies --unsubscribe): signed VERP "
                            "return paths, an inbound SMTP server standing in for SES, the "
                            "bounce and FBL intakes, and an MX whose asyncbounce-* and "
                            "complain-* mailboxes mail back a DSN or an ARF report")
    local.set_defaults(func=cmd_local)

    demo = sub.add_parser("demo", help="run N sample messages through the local stack")
    demo.add_argument("--messages", type=int, default=1000, metavar="N",
                      help="how many sample messages to enqueue (default 1000)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--via", choices=DEMO_PATHS, default="sqs",
                      help="how messages go in: sqs (the queue client, the default), http "
                           "(the HTTP API with the demo tenant's key), smtp (the submission "
                           "listener: STARTTLS, AUTH as the demo tenant); the outcome table "
                           "is the same")
    demo.add_argument("--dir", default=".quiver/demo",
                      help="where the stack keeps its files (default .quiver/demo)")
    demo.add_argument("--keep", metavar="DIR",
                      help="copy the event objects to DIR (the bucket's key layout) before "
                           "the local stack, and its in-memory bucket, stop; query them with "
                           "`quiver events query --dir DIR`")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result
