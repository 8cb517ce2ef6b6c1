"""`quiver keys create --tenant T | revoke KEY_ID | list`: tenants' API keys for the
HTTP API (Bearer) and the SMTP listener (AUTH password).

The table comes from --table or $QUIVER_TENANT_KEYS_TABLE, endpoint and region from
boto3's usual AWS_* variables, so the same command works on the local stack.
`--config` (a policy file) checks that the tenant exists. Exit status: 0 done, 1
no such key, 2 a usage or AWS error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from typing import Any

from quiver.settings import ENV_TENANT_KEYS_TABLE
from quiver.storage.base import StorageError
from quiver.tenants.keys import KeyRecord, TenantKeyError, TenantKeys


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(record: KeyRecord) -> dict[str, Any]:
    return {"key_id": record.key_id, "tenant": record.tenant, "created_at": _when(
        record.created_at), "who": record.who, "revoked_at": (
        _when(record.revoked_at) if record.revoked_at is not None else None)}


def cmd_keys(args: argparse.Namespace) -> int:
    where = f"quiver keys {args.action}"
    table = args.table or os.environ.get(ENV_TENANT_KEYS_TABLE, "")
    if not table:
        print(f"{where}: no table: pass --table or set {ENV_TENANT_KEYS_TABLE} (`quiver "
              "local` prints it; the deployed one is the stateful stack's tenant keys "
              "table)", file=sys.stderr)
        return 2
    if args.action == "create" and args.config:
        from quiver.policy import PolicyError
        from quiver.policy.source import read_policy

        try:
            tenants = read_policy(args.config)[0].tenants.tenants
        except PolicyError as exc:
            print(f"{where}: --config {args.config}: {exc}", file=sys.stderr)
            return 2
        if args.tenant not in tenants:
            print(f"{where}: tenant {args.tenant!r} is not in the policy (known: "
                  f"{', '.join(sorted(tenants)) or 'none'}); add [tenants.{args.tenant}] "
                  "with its domains first", file=sys.stderr)
            return 2

    import boto3

    from quiver.storage.dynamo_keys import DynamoTenantKeys

    session = boto3.session.Session()
    keys = TenantKeys(DynamoTenantKeys(session.client("dynamodb"), table))
    try:
        return asyncio.run(_run(args, keys, session))
    except StorageError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except TenantKeyError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, keys: TenantKeys, session: Any) -> int:
    from quiver.controls.command import caller_identity

    if args.action == "create":
        key, record = await keys.create(tenant=args.tenant, who=caller_identity(session),
                                        now=time.time())
        if args.json:
            print(json.dumps({**_row(record), "key": key}))
        else:
            print(f"key {record.key_id} for tenant {record.tenant} (shown once; store it "
                  f"now):\n{key}")
        return 0
    if args.action == "revoke":
        record = await keys.revoke(args.key_id, now=time.time())
        print(json.dumps(_row(record)) if args.json else
              f"key {record.key_id} of tenant {record.tenant} revoked at "
              f"{_when(record.revoked_at)}")
        return 0
    records = await keys.list(tenant=args.tenant)
    if args.json:
        print(json.dumps([_row(r) for r in records]))
        return 0
    if not records:
        print("no keys")
    for r in records:
        state = f"revoked {_when(r.revoked_at)}" if r.revoked_at is not None else "active"
        print(f"{r.key_id}  {r.tenant:<20} created {_when(r.created_at)} by {r.who}  {state}")
    return 0


def add_parser(sub: Any) -> None:
    """The `keys` command and its subcommands, on the CLI's subparsers."""
    keys = sub.add_parser(
        "keys", help="tenants' API keys: create, revoke, list",
        description="Tenants' API keys in the tenant keys table ($QUIVER_TENANT_KEYS_TABLE): "
                    "a Bearer token for the HTTP API, the password of SMTP AUTH (username: "
                    "the tenant or the key id). Only a hash is stored.")
    ksub = keys.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ksub.add_parser(name, help=help_text,
                                                     description=help_text)
        p.add_argument("--table", help="the tenant keys table "
                                       "(default $QUIVER_TENANT_KEYS_TABLE)")
        p.add_argument("--json", action="store_true", help="as JSON")
        p.set_defaults(func=cmd_keys)
        return p

    create = command("create", "make a key for a tenant; it is printed once")
    create.add_argument("--tenant", required=True, help="the tenant ([tenants.<name>])")
    create.add_argument("--config", metavar="POLICY",
                        help="policy file: check that the tenant exists")
    revoke = command("revoke", "refuse a key from the next request on (its record stays)")
    revoke.add_argument("key_id", help="the key's id (`quiver keys list`)")
    lst = command("list", "every key: id, tenant, created, revoked")
    lst.add_argument("--tenant", help="only this tenant's keys")
