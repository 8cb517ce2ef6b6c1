"""`quiver preflight --config POLICY`: the DNS a receiver checks, checked before sending.

Exit status: 0 every check ok (warnings allowed), 1 something missing, wrong or
unanswered (the table names it), 2 a usage error (bad arguments, a policy that does
not load). Lookups go to the system's resolvers, or to `--nameserver HOST:PORT`;
each one is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from quiver.preflight.checks import FAILING, Inputs, Row, run_checks
from quiver.preflight.lookup import DEFAULT_TIMEOUT, Lookup, parse_nameserver

# Each lookup's lifetime is bounded; so is the whole run (SPF's 10-lookup limit per
# domain and source), but a typo'd timeout must not make it wait for an hour.
MAX_TIMEOUT = 60.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "preflight",
        help="check PTR, SPF, DKIM and bounce MX records for every source and domain")
    p.add_argument("--config", required=True, metavar="POLICY", help="the policy TOML file")
    p.add_argument("--nameserver", metavar="HOST:PORT",
                   help="ask this DNS server instead of the system's resolvers")
    p.add_argument("--region", metavar="REGION",
                   help="the region whose SES inbound endpoint bounce MXes must name "
                        "(default $AWS_REGION or $AWS_DEFAULT_REGION; any region if unset)")
    p.add_argument("--skip-secrets", action="store_true",
                   help="do not read DKIM keys from Secrets Manager (their rows say skipped)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"per DNS lookup (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_preflight)


def cmd_preflight(args: argparse.Namespace) -> int:
    from quiver.policy import PolicyError, load_policy

    if not 0 < args.timeout <= MAX_TIMEOUT:
        print(f"quiver preflight: --timeout must be in (0, {MAX_TIMEOUT:g}]", file=sys.stderr)
        return 2
    nameserver = None
    if args.nameserver:
        try:
            nameserver = parse_nameserver(args.nameserver)
        except ValueError as exc:
            print(f"quiver preflight: {exc}", file=sys.stderr)
            return 2
    try:
        policy = load_policy(args.config)
    except PolicyError as exc:
        print(f"quiver preflight: {exc}", file=sys.stderr)
        return 2
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    load_secret = None
    if not args.skip_secrets and any(key.key_secret for key in policy.dkim):
        load_secret = _secret_reader()
    rows = run_checks(Inputs(
        policy=policy,
        lookup=Lookup(nameserver=nameserver, timeout=args.timeout),
        base_dir=Path(args.config).resolve().parent,
        load_secret=load_secret,
        region=region or None,
    ))
    failed = [row for row in rows if row.status in FAILING]
    if args.json:
        write_json(rows, sys.stdout)
    else:
        write_table(rows, sys.stdout)
        print(f"\n{len(rows)} checks, {len(failed)} not ready"
              + ("" if failed else ": ready to send"))
    return 1 if failed else 0


def _secret_reader() -> Callable[[str], bytes]:
    import boto3

    from quiver.storage.aws import secret_reader

    return secret_reader(boto3.session.Session())


def write_table(rows: list[Row], out: TextIO) -> None:
    header = ("CHECK", "SUBJECT", "STATUS", "DETAIL")
    cells = [header] + [(r.check, r.subject, r.status, r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    for cell in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(cell[:3], widths, strict=True))
                  + "  " + cell[3] + "\n")


def write_json(rows: list[Row], out: TextIO) -> None:
    failed = sum(1 for r in rows if r.status in FAILING)
    json.dump({"ready": failed == 0, "failed": failed,
               "checks": [{"check": r.check, "subject": r.subject, "status": r.status,
                           "detail": r.detail} for r in rows]}, out, indent=2)
    out.write("\n")
