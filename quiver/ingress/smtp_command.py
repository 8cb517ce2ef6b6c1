"""`quiver ingress smtp`: the SMTP submission listener, until SIGTERM.

On SIGTERM (ECS stopping the task) it stops accepting, lets open transactions
finish, and closes what is left after --stop-timeout (keep it under the task's
stopTimeout, so the listener closes sessions itself rather than being killed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from quiver.client import QuiverClient
from quiver.ingress.smtp_server import AllowedNetwork, ListenerConfig, SmtpListener
from quiver.ingress.smtp_tls import TlsSourceError, context_from_files, context_from_secret
from quiver.ingress.tenant_gate import PolicyTenantGate, TenantGate
from quiver.policy.tenants import TenantsPolicy

DEFAULT_STOP_TIMEOUT = 25.0  # ECS waits 30 s (stopTimeout) before SIGKILL
log = logging.getLogger("quiver.ingress.smtp")


def add_parser(sub: Any) -> None:
    ingress = sub.add_parser("ingress", help="ingress listeners that enqueue onto the "
                             "outbound queue")
    isub = ingress.add_subparsers(dest="ingress_command", required=True)
    smtp = isub.add_parser("smtp", help="the SMTP submission listener (AUTH over STARTTLS "
                           "or an allowed network; 250 only once enqueued)")
    smtp.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    smtp.add_argument("--port", type=int, default=587, help="port (default 587; 0: any free)")
    smtp.add_argument("--hostname", default="smtp.quiver.local",
                      help="the name in the greeting and EHLO reply")
    smtp.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for STARTTLS")
    smtp.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    smtp.add_argument("--tls-secret", metavar="ARN", help="a Secrets Manager secret with "
                      "JSON {certificate, private_key} (PEM), read at start")
    smtp.add_argument("--allow-network", action="append", default=[], metavar="CIDR[=TENANT]",
                      help="clients from CIDR may send without AUTH (as TENANT if given, "
                           "else as their X-Quiver-Tenant); repeat for more")
    smtp.add_argument("--proxy-protocol", action="store_true",
                      help="every connection starts with a PROXY v1/v2 header (behind a "
                           "Network Load Balancer); connections without one are dropped")
    smtp.add_argument("--config", help="policy file, ssm:<name> or s3://... whose [content] "
                      "size limit is the SIZE advertised and enforced")
    smtp.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT,
                      metavar="SECONDS", help="on SIGTERM, how long open transactions may "
                      f"take to finish (default {DEFAULT_STOP_TIMEOUT:g})")
    smtp.add_argument("--metrics", action="store_true",
                      help="write CloudWatch EMF lines (logins refused, 4xx/5xx replies, "
                           "connections) to stdout once a minute")
    smtp.set_defaults(func=cmd_ingress_smtp)


def cmd_ingress_smtp(args: argparse.Namespace) -> int:
    from quiver.policy import Content, PolicyError
    from quiver.policy.source import read_policy
    from quiver.settings import SettingsError, deployment_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        deployment = deployment_from_env(os.environ)
        policy = read_policy(args.config)[0] if args.config else None
        content = policy.content if policy is not None else Content()
        allowed = tuple(AllowedNetwork.parse(spec) for spec in args.allow_network)
        tls = _tls(args, region=deployment.region)
    except (SettingsError, PolicyError, TlsSourceError, ValueError) as exc:
        print(f"quiver ingress smtp: {exc}", file=sys.stderr)
        return 2
    client = queue_client(deployment, max_message_size=content.max_message_size,
                          long_lines=content.long_lines)
    config = ListenerConfig(host=args.host, port=args.port, hostname=args.hostname, tls=tls,
                            allowed=allowed, proxy_protocol=args.proxy_protocol)
    gate = tenant_gate(deployment, tenants=policy.tenants if policy is not None else None)
    return asyncio.run(serve(config, client=client, gate=gate,
                             stop_timeout=args.stop_timeout,
                             metrics_out=sys.stdout if args.metrics else None))


def queue_client(deployment: Any, **content: Any) -> QuiverClient:
    """The queue client with bounded retries: a client waits for the reply to its DATA,
    so an unreachable queue must become a 451 in seconds, not minutes."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=deployment.region)
    config = Config(connect_timeout=5, read_timeout=20,
                    retries={"mode": "standard", "max_attempts": 3})
    return QuiverClient(sqs=session.client("sqs", config=config),
                        s3=session.client("s3", config=config),
                        queue_url=deployment.outbound_queue_url,
                        spill_bucket=deployment.spill_bucket, **content)


def tenant_gate(deployment: Any, *, tenants: TenantsPolicy | None) -> PolicyTenantGate:
    """The policy's [tenants] and the deployment's key table (without one, no key
    verifies: AUTH is refused and only allowed networks send)."""
    keys = None
    if deployment.tenant_keys_table:
        import boto3

        from quiver.storage.dynamo_keys import DynamoTenantKeys
        from quiver.tenants.keys import TenantKeys

        dynamodb = boto3.session.Session(region_name=deployment.region).client("dynamodb")
        keys = TenantKeys(DynamoTenantKeys(dynamodb, deployment.tenant_keys_table))
    return PolicyTenantGate(tenants or TenantsPolicy(), keys)


def _tls(args: argparse.Namespace, *, region: str) -> Any:
    if args.tls_secret:
        import boto3

        return context_from_secret(args.tls_secret,
                                   secrets=boto3.client("secretsmanager", region_name=region))
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        return context_from_files(Path(args.tls_cert), Path(args.tls_key))
    return None


async def serve(config: ListenerConfig, *, client: QuiverClient, gate: TenantGate | None,
                stop_timeout: float, metrics_out: Any = None) -> int:
    listener = await SmtpListener(config, client=client, gate=gate,
                                  metrics_out=metrics_out).start()
    host, port = listener.address
    log.info("SMTP ingress listening on %s:%d (STARTTLS %s, PROXY protocol %s)", host, port,
             "on" if config.tls else "off", "on" if config.proxy_protocol else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no new connections; open transactions have %.0f s", stop_timeout)
    cut = await listener.stop(timeout=stop_timeout)
    log.info("stopped (%d session(s) cut off at the timeout)", cut)
    return 0
