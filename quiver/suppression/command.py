"""`quiver suppression add|remove|check|list|import|export`: arguments and the AWS store.

The operations are `quiver.suppression.admin`'s; this module parses, validates and
builds the DynamoDB store (table from --table or $QUIVER_SUPPRESSION_TABLE,
endpoint and region from boto3's usual AWS_* variables, so the same command
works on the local stack). Exit status: 0 done (check: suppressed), 1 check: not
suppressed, or import: invalid rows or a failed write; 2 a usage, input or AWS
error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from quiver.addresses import AddressError
from quiver.settings import ENV_SUPPRESSION_TABLE
from quiver.storage.base import ALL_TENANTS, SUPPRESSION_REASONS, StorageError, Suppression
from quiver.suppression import admin
from quiver.suppression.address import ScopeError, parse_scope, suppression_address, valid_tenant
from quiver.suppression.csvfile import CsvError, Defaults, decode
from quiver.units import parse_duration


class _Usage(ValueError):
    pass


def cmd_suppression(args: argparse.Namespace) -> int:
    where = f"quiver suppression {args.action}"
    table = args.table or os.environ.get(ENV_SUPPRESSION_TABLE, "")
    if not table:
        print(f"{where}: no table: pass --table or set {ENV_SUPPRESSION_TABLE} (`quiver "
              "local` prints it; the deployed one is the stack's suppression table)",
              file=sys.stderr)
        return 2
    now = time.time()
    try:
        scope = parse_scope(args.scope) if getattr(args, "scope", None) else None
        tenant = getattr(args, "tenant", None)
        if tenant is not None and not valid_tenant(tenant):
            raise _Usage(f"--tenant {tenant!r}: expected 1-128 characters of "
                         "[A-Za-z0-9._:@/+-], as a message's tenant")
        address = suppression_address(args.address) if getattr(args, "address", None) else ""
        expires = expiry(args.expires, now) if getattr(args, "expires", None) else None
        text = _input(args) if args.action == "import" else ""
    except (ScopeError, AddressError, _Usage) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except CsvError as exc:
        print(f"{where}: {exc}; nothing written", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{where}: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2

    import boto3

    from quiver.storage.dynamo import DynamoSuppression

    store = DynamoSuppression(boto3.session.Session().client("dynamodb"), table)
    out: TextIO = sys.stdout
    try:
        if args.action == "export" and args.output not in (None, "-"):
            out = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        print(f"{where}: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            entry = Suppression(address=address, reason=args.reason, created_at=now,
                                tenant=scope or ALL_TENANTS, source=args.source,
                                expires_at=expires)
            return asyncio.run(admin.add(store, entry, out=out))
        if args.action == "remove":
            return asyncio.run(admin.remove(store, address, tenant=scope or ALL_TENANTS,
                                            out=out))
        if args.action == "check":
            return asyncio.run(admin.check(store, address, tenant=tenant, out=out))
        if args.action == "list":
            return asyncio.run(admin.list_entries(store, tenant=scope, now=now,
                                                  lapsed=args.lapsed, out=out))
        if args.action == "export":
            return asyncio.run(admin.export(store, tenant=scope, now=now, lapsed=args.lapsed,
                                            out=out, err=sys.stderr))
        defaults = Defaults(tenant=scope or ALL_TENANTS, reason=args.reason,
                            source=args.source or f"import {Path(args.file).name}", now=now)
        return asyncio.run(admin.import_csv(store, text, defaults=defaults,
                                            skip_invalid=args.skip_invalid, out=out,
                                            err=sys.stderr))
    except StorageError as exc:
        print(f"{where}: the suppression table {table!r} failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()


def _input(args: argparse.Namespace) -> str:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    return decode(data)


def expiry(text: str, now: float) -> int:
    """--expires: a duration from now ("30d") or an RFC 3339 time, as epoch seconds."""
    try:
        return int(now + parse_duration(text))
    except ValueError:
        pass
    try:
        when: datetime | None = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _Usage(f"--expires {text!r}: expected a duration (30d) or an RFC 3339 time "
                     "with a time zone (2027-01-01T00:00:00Z)")
    if when.timestamp() <= now:
        raise _Usage(f"--expires {text!r}: is in the past")
    return int(when.timestamp())


def add_parser(sub: Any) -> None:
    """The `suppression` command and its subcommands, on the CLI's subparsers."""
    sup = sub.add_parser(
        "suppression", help="the suppression list: add, remove, check, list, import, export",
        description="Addresses that are never mailed (DynamoDB table $QUIVER_SUPPRESSION_TABLE; "
                    "AWS endpoint and region from the usual AWS_* variables). Scopes: "
                    "'global' (every tenant, and messages without one) or 'tenant:<name>'.")
    ssub = sup.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ssub.add_parser(name, help=help_text,
                                                     description=help_text)
        p.add_argument("--table", help="the suppression table (default $QUIVER_SUPPRESSION_TABLE)")
        p.set_defaults(func=cmd_suppression)
        return p

    scope_help = "'global' (default) or 'tenant:<name>'"
    add = command("add", "add or replace an entry")
    add.add_argument("address", help="the email address (normalised: lower-cased)")
    add.add_argument("--scope", default="global", help=scope_help)
    add.add_argument("--reason", default="manual", choices=SUPPRESSION_REASONS,
                     help="why (default manual)")
    add.add_argument("--source", default="", help="what asked for it, for people (a ticket...)")
    add.add_argument("--expires", metavar="WHEN",
                     help="lapse after a duration (30d) or at an RFC 3339 time (default never)")
    rm = command("remove", "remove an entry (senders may keep it cached for up to "
                           "[suppression] cache_ttl)")
    rm.add_argument("address", help="the email address (normalised: lower-cased)")
    rm.add_argument("--scope", default="global", help=scope_help)
    chk = command("check", "is an address suppressed for a message of --tenant (or of no "
                           "tenant)? exit 0 and the entry if so, 1 if not")
    chk.add_argument("address", help="the email address (normalised: lower-cased)")
    chk.add_argument("--tenant", help="the message's tenant (default: none: global only)")
    for name, help_text in (("list", "print the entries, one a line"),
                            ("export", "write the entries as CSV (address,scope,reason,"
                                       "created,expires,source)")):
        p = command(name, help_text)
        p.add_argument("--scope", help="only this scope (default: every scope)")
        p.add_argument("--lapsed", action="store_true", help="include entries past expiry")
        if name == "export":
            p.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    imp = command("import", "add the entries of a CSV file (header: address, and any of "
                            "scope,reason,created,expires,source); every row is validated "
                            "and nothing is written if one is invalid")
    imp.add_argument("file", help="the CSV file, or - for standard input")
    imp.add_argument("--scope", default="global", help=f"for rows without one: {scope_help}")
    imp.add_argument("--reason", default="manual", choices=SUPPRESSION_REASONS,
                     help="for rows without one (default manual)")
    imp.add_argument("--source", default="",
                     help="for rows without one (default 'import <file name>')")
    imp.add_argument("--skip-invalid", action="store_true",
                     help="import the valid rows and report the invalid ones")
