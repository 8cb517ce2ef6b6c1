#!/usr/bin/env python3
"""The Quiver CDK app: `cdk deploy` from the repo root deploys the whole system.

This file only reads CDK context and wires the stacks (`cdk/stacks.py`). Context
keys (set in cdk.json or with `-c key=value`):
  quiver:policy            policy file deployed to SSM (default policy/quiver.toml)
  quiver:prefix            resource-name prefix (default "quiver")
  quiver:vpc-cidr          the VPC's CIDR (default 10.60.0.0/16; policy addresses must fit)
  quiver:alarm-email       address subscribed to the alarm topic (optional)
  quiver:public-ipv4-pool  BYOIP pool to allocate the policy's exact addresses from (optional)
  quiver:region            the region, required when the policy's nodes name AZ IDs (use1-az1)
  quiver:dark              "true": deploy with no sender running (first deploy, before DNS
                           and port 25 are ready); "false" (default) to go live
  quiver:smtp-tls-secret   Secrets Manager secret (name or ARN) with the SMTP ingress's
                           certificate, JSON {certificate, private_key}; unset, the ingress
                           offers no STARTTLS and no AUTH (allowed networks only)
  quiver:smtp-allowed-networks  CIDR[=tenant],... that may submit without AUTH (optional)
"""

from __future__ import annotations

import sys
from pathlib import Path

from aws_cdk import App

from cdk.deploy_checks import DeploymentError
from cdk.stacks import DEFAULT_VPC_CIDR, add_quiver_stacks
from proxy_tier.render import RenderError
from quiver.names import DEFAULT_PREFIX
from quiver.policy import PolicyError

ROOT = Path(__file__).resolve().parent


def dark_flag(value: str | None) -> bool:
    """`-c quiver:dark=true|false`; anything else is refused, never read as "live"."""
    text = (value or "false").strip().lower()
    if text not in ("true", "false"):
        raise DeploymentError([f"quiver:dark: expected true or false, got {value!r}"],
                              origin="context")
    return text == "true"


def main() -> int:
    app = App()

    def context(key: str, default: str | None = None) -> str | None:
        value = app.node.try_get_context(key)
        return default if value in (None, "") else str(value)

    policy_path = Path(context("quiver:policy", "policy/quiver.toml") or "")
    if not policy_path.is_absolute():
        policy_path = ROOT / policy_path
    try:
        add_quiver_stacks(
            app,
            policy_path=policy_path,
            repo_root=ROOT,
            prefix=context("quiver:prefix", DEFAULT_PREFIX) or DEFAULT_PREFIX,
            vpc_cidr=context("quiver:vpc-cidr", DEFAULT_VPC_CIDR) or DEFAULT_VPC_CIDR,
            public_ipv4_pool=context("quiver:public-ipv4-pool"),
            alarm_email=context("quiver:alarm-email"),
            dark=dark_flag(context("quiver:dark", "false")),
            region=context("quiver:region"),
            smtp_tls_secret=context("quiver:smtp-tls-secret"),
            smtp_allowed_networks=tuple(
                n.strip() for n in (context("quiver:smtp-allowed-networks") or "").split(",")
                if n.strip()),
        )
    except (PolicyError, DeploymentError, RenderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("fix the policy (check it with `quiver config check <file>`) and synth again",
              file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
