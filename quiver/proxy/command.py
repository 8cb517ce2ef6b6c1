"""`quiver proxy failover --source NAME --to-node NODE [--dry-run] [--force]`.

Exit status: 0 moved (or already there, or a dry run); 2 refused, a usage or an
AWS error (nothing half-done is hidden: the message says what is where).
Region and credentials come from boto3's usual AWS_* variables and profiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from quiver.policy import PolicyError
from quiver.proxy.failover import FailoverError, FailoverResult, failover


def add_parser(sub: Any) -> None:
    p = sub.add_parser("proxy", help="the HAProxy egress tier: Elastic IP failover")
    psub = p.add_subparsers(dest="proxy_command", required=True)
    f = psub.add_parser(
        "failover", help="move a source's Elastic IP to a standby address on another node")
    f.add_argument("--config", required=True, metavar="POLICY",
                   help="the deployed policy (a file, or ssm:<parameter>)")
    f.add_argument("--source", required=True, help="the source whose Elastic IP moves")
    f.add_argument("--to-node", required=True, metavar="NODE", help="the node it moves to")
    f.add_argument("--interface-id", metavar="ENI",
                   help="the target node's interface, when several carry its tag")
    f.add_argument("--force", action="store_true",
                   help="allow a target in the failed node's own AZ")
    f.add_argument("--dry-run", action="store_true", help="say what would move; change nothing")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=cmd_failover)


def cmd_failover(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from quiver.policy.source import read_policy

    session = boto3.session.Session()
    try:
        policy, _, _ = read_policy(args.config, ssm=lambda: session.client("ssm"))
        result = failover(
            session.client("ec2"), policy, source=args.source, to_node=args.to_node,
            force=args.force, dry_run=args.dry_run, interface_id=args.interface_id)
    except (FailoverError, PolicyError) as exc:
        print(f"quiver proxy failover: {exc}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as exc:
        print(f"quiver proxy failover: AWS refused: {exc}; run again once fixed (a "
              "standby address already assigned is reused)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(describe(result))
    return 0


def describe(result: FailoverResult) -> str:
    b, a = result.before, result.after
    what = f"{result.public_ip} (source {result.source}, {result.allocation_id})"
    if result.already:
        return (f"{what} is already on node {a.node} ({a.interface}, {a.private_ip}): "
                f"nothing to do\nthe policy should say {result.policy_edit}")
    verb = "would move" if result.dry_run else "moved"
    taken = "a new standby address" if result.assigned else "a standby address it already had"
    return "\n".join([
        f"{verb} {what}",
        f"  from node {b.node or '-'} ({b.interface or 'not associated'}, {b.private_ip or '-'})",
        f"  to   node {a.node} ({a.interface}, {a.private_ip}: {taken})",
        f"next: in the policy set {result.policy_edit}, then `cdk deploy --all`: "
        f"node {a.node}'s HAProxy sends {result.source}'s mail from it once deployed",
    ])
