"""The sending addresses: one Elastic IP per policy source, kept forever.

An address's reputation with receiving providers takes weeks of warm-up to build,
so the addresses live in the stateful stack, are retained when it is deleted, and
are only associated (by the proxy tier) with the secondary private IP of their
node. Addresses you already own are adopted with `cdk import` (see "The sending
addresses" in README.md), or, for a BYOIP range, allocated at exactly the policy's
`ip` from `public_ipv4_pool`.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk.logical_ids import logical_id_part, pin_logical_id
from quiver.policy import Policy


def egress_ip_logical_id(source: str) -> str:
    return f"EgressIp{logical_id_part(source)}"


class EgressAddresses(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        policy: Policy,
        public_ipv4_pool: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.by_source: dict[str, ec2.CfnEIP] = {}
        seen: dict[str, str] = {}
        for name, source in sorted(policy.sources.items()):
            logical_id = egress_ip_logical_id(name)
            if logical_id in seen:
                raise ValueError(
                    f"sources.{name}: its logical ID {logical_id} collides with source "
                    f"{seen[logical_id]!r}; rename one of them"
                )
            seen[logical_id] = name
            eip = ec2.CfnEIP(
                self, logical_id,
                domain="vpc",
                public_ipv4_pool=public_ipv4_pool,
                address=source.ip if public_ipv4_pool else None,
                tags=[
                    {"key": "Name", "value": f"quiver-{name}"},
                    {"key": "quiver:source", "value": name},
                    {"key": "quiver:ehlo", "value": source.ehlo},
                ],
            )
            eip.apply_removal_policy(RemovalPolicy.RETAIN)
            pin_logical_id(eip, logical_id)
            self.by_source[name] = eip
            CfnOutput(
                self, f"{logical_id}Address",
                value=eip.attr_public_ip,
                description=f"Public address of source {name} (EHLO {source.ehlo}); "
                f"the policy's sources.{name}.ip, SPF and PTR must name it",
            ).override_logical_id(f"{logical_id}Address")
