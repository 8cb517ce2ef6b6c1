"""What a valid policy must also satisfy to be deployed by this app.

`quiver.policy` validates a policy for any host; a deployed sender has more limits:
it runs on Fargate in subnets without an internet route, reads DKIM keys from
Secrets Manager, and is stopped by ECS after at most 120 s. Each check names the
policy key to change, so a policy that would deploy a broken system fails synth.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from proxy_tier.bootstrap import SIGNAL_URL_BUDGET
from proxy_tier.render import RenderError
from quiver.policy import Policy
from quiver.proxy.blocks import NODE_BLOCK_PREFIX, node_block

# ECS waits this long after SIGTERM before SIGKILL: the sender's drain deadline plus
# time to make unfinished messages visible again (up to intake.max_inflight_messages,
# in batches of 10) and flush the last event batch.
STOP_MARGIN_S = 20
# Fargate refuses a container stopTimeout above 120 s.
FARGATE_MAX_STOP_TIMEOUT_S = 120

# An AZ name (us-east-1a) names a different physical zone in each account; an AZ ID
# (use1-az1) names the same one everywhere, so capacity checks made with
# `describe-instance-type-offerings --location-type availability-zone-id` hold.
_AZ = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$")
_AZ_ID = re.compile(r"^([a-z]{2,5}\d+)-az\d+$")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")


class DeploymentError(ValueError):
    """The policy is valid but this app cannot deploy it; `problems` lists `path: reason`."""

    def __init__(self, problems: list[str], origin: str = "policy") -> None:
        self.problems = problems
        super().__init__(
            f"{origin}: cannot deploy: {len(problems)} problem(s)\n  " + "\n  ".join(problems)
        )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the policy puts the system: one region, the AZs of its proxy nodes."""

    region: str
    # AZ names, or AZ IDs when `by_id` (subnets are then placed with AvailabilityZoneId).
    availability_zones: tuple[str, ...]
    by_id: bool = False


def stop_timeout_seconds(policy: Policy) -> int:
    """The sender container's stopTimeout: the policy's drain deadline plus a margin."""
    return int(-(-policy.intake.drain_deadline // 1)) + STOP_MARGIN_S


# Fargate task sizes, in vCPUs (each with its own memory range).
FARGATE_VCPUS = (1, 2, 4, 8, 16)
MEMORY_MIB_PER_VCPU = 2048


def task_vcpus(policy: Policy) -> int:
    """vCPUs for a sender task: one for the event loop, one per DKIM signing process
    or thread (`delivery.signing_processes`, `delivery.signing_threads`), rounded up
    to a Fargate size."""
    wanted = 1 + policy.delivery.signing_processes + policy.delivery.signing_threads
    for size in FARGATE_VCPUS:
        if size >= wanted:
            return size
    return FARGATE_VCPUS[-1]


def check_deployable(
    policy: Policy, *, dkim_secret_prefix: str, return_path_secret_prefix: str = "",
    origin: str = "policy", region: str | None = None,
) -> Placement:
    """Check the deploy-only rules; return the region and AZs the policy implies.

    With AZ names the region is theirs (`region`, if given, must agree); AZ IDs do
    not spell their region, so `region` (context `quiver:region`) is required.
    """
    problems: list[str] = []
    if policy.local_only:
        problems.append(
            "local_only: this policy is for a stack on one machine (`quiver local`, test "
            "rigs) and may let senders and proxies reach loopback, private or metadata "
            "addresses; remove local_only and every such allow_networks entry to deploy it"
        )
    nodes = policy.proxy.nodes
    if not nodes:
        problems.append(
            "proxy.nodes: deployed senders reach receiving MXes only through proxy nodes; "
            "define one node per AZ"
        )
    regions: set[str] = set()
    id_prefixes: set[str] = set()
    for name, node in nodes.items():
        match = _AZ.match(node.az)
        by_id = _AZ_ID.match(node.az)
        if match is not None:
            regions.add(match.group(1))
        elif by_id is not None:
            id_prefixes.add(by_id.group(1))
        else:
            problems.append(
                f"proxy.nodes.{name}.az: {node.az!r} is neither an AZ name like 'us-east-1a' "
                "nor an AZ ID like 'use1-az1'"
            )
    if regions and id_prefixes:
        problems.append("proxy.nodes: give every node an AZ name or every node an AZ ID, "
                        "not both")
    if len(regions) > 1 or len(id_prefixes) > 1:
        problems.append(
            "proxy.nodes: all nodes must be in one region, found "
            + ", ".join(sorted(regions | id_prefixes))
        )
    if region is not None and not _REGION.match(region):
        problems.append(f"quiver:region: {region!r} is not a region name like 'us-east-1'")
    elif region is not None and regions and region not in regions:
        problems.append(
            f"quiver:region: {region} differs from the region of the nodes' AZs "
            f"({', '.join(sorted(regions))})"
        )
    if id_prefixes and region is None:
        problems.append(
            "proxy.nodes: AZ IDs do not name their region; deploy with "
            "-c quiver:region=<region> (the region whose AZ IDs start "
            f"{', '.join(sorted(id_prefixes))}-)"
        )
    azs = tuple(sorted({node.az for node in nodes.values()}))
    if nodes and len(azs) < 2:
        problems.append(
            "proxy.nodes: place nodes in at least 2 AZs; senders and proxies must survive "
            "the loss of one AZ"
        )
    for name, source in policy.sources.items():
        if source.node is None:
            problems.append(
                f"sources.{name}.node: deployed senders have no direct internet route; "
                "place every source on a proxy node"
            )
    for i, key in enumerate(policy.dkim):
        if key.key_secret is None:
            problems.append(
                f"dkim[{i}].key_file: deployed senders read keys from Secrets Manager; "
                f"use key_secret = '{dkim_secret_prefix}{key.domain}/{key.selector}'"
            )
        elif not key.key_secret.startswith(dkim_secret_prefix):
            problems.append(
                f"dkim[{i}].key_secret: senders may read only secrets named "
                f"'{dkim_secret_prefix}*', got {key.key_secret!r}"
            )
    return_path = policy.return_path
    if (return_path.enabled or policy.unsubscribe.enabled) and return_path.key_secret is None:
        problems.append(
            "return_path.key_file: deployed senders read the return-path key ring from "
            f"Secrets Manager; use key_secret = '{return_path_secret_prefix}keys'"
        )
    elif return_path.key_secret is not None and not return_path.key_secret.startswith(
            return_path_secret_prefix):
        problems.append(
            "return_path.key_secret: senders may read only secrets named "
            f"'{return_path_secret_prefix}*', got {return_path.key_secret!r}"
        )
    stop = stop_timeout_seconds(policy)
    if stop > FARGATE_MAX_STOP_TIMEOUT_S:
        problems.append(
            f"intake.drain_deadline: the stop timeout would be {stop}s (drain deadline + "
            f"{STOP_MARGIN_S}s); Fargate allows at most {FARGATE_MAX_STOP_TIMEOUT_S}s"
        )
    if problems:
        raise DeploymentError(problems, origin)
    return Placement(region=region or regions.pop(), availability_zones=azs,
                     by_id=bool(id_prefixes))


# Private IPv4 addresses per network interface, by instance type (EC2's "IPv4
# addresses per interface"; `aws ec2 describe-instance-types --instance-types T
# --query 'InstanceTypes[].NetworkInfo.Ipv4AddressesPerInterface'`). Synth is
# offline, so the table is here: a type missing from it is refused, not guessed.
ADDRESSES_PER_ENI: dict[str, int] = {
    **{f"{family}.medium": 4 for family in ("c7g", "c6g", "m7g", "m6g", "r7g")},
    **{f"{family}.{size}": n
       for family in ("c7g", "c6g", "c7i", "c6i", "m7g", "m6g", "m7i", "m6i", "r7g")
       for size, n in (("large", 10), ("xlarge", 15), ("2xlarge", 15), ("4xlarge", 30),
                       ("8xlarge", 30), ("12xlarge", 30), ("16xlarge", 50))},
    **{f"{family}.{size}": n
       for family in ("t3", "t4g")
       for size, n in (("micro", 2), ("small", 4), ("medium", 6), ("large", 12),
                       ("xlarge", 15), ("2xlarge", 15))},
}


def check_proxy_capacity(policy: Policy, *, instance_type: str) -> None:
    """Each node's addresses fit one interface of `instance_type` and its fixed block,
    and no two nodes' blocks overlap. An interface update that asks for more addresses
    than the type carries fails at deploy, half way; here it fails synth."""
    problems: list[str] = []
    limit = ADDRESSES_PER_ENI.get(instance_type)
    if limit is None:
        problems.append(
            f"instance type {instance_type}: its addresses per interface are unknown here; "
            "add it to ADDRESSES_PER_ENI in cdk/deploy_checks.py (aws ec2 "
            "describe-instance-types ... Ipv4AddressesPerInterface)"
        )
    blocks: dict[str, str] = {}
    for name, node in sorted(policy.proxy.nodes.items()):
        sources = [(s.name, s.local_ip) for s in policy.sources.values()
                   if s.node == name and s.local_ip]
        # One address is the node's primary; a failover may add one standby per
        # source of another node, which is the operator's call at the time.
        if limit is not None and 1 + len(sources) > limit:
            problems.append(
                f"proxy.nodes.{name}: 1 primary + {len(sources)} source addresses exceed "
                f"{instance_type}'s {limit} addresses per interface; move sources to "
                f"another node or use a larger instance type"
            )
        block = node_block(node.address)
        for source, local_ip in sources:
            if ipaddress.ip_address(local_ip) not in block:
                problems.append(
                    f"sources.{source}.local_ip: {local_ip} is outside node "
                    f"{name}'s fixed block {block} (the /{NODE_BLOCK_PREFIX} of its address "
                    f"{node.address}); the subnet reservation holding it cannot grow in place, "
                    f"so pick a free address in {block}"
                )
        key = str(block)
        if key in blocks:
            problems.append(
                f"proxy.nodes.{name}: its fixed block {block} is node {blocks[key]}'s too "
                f"(reservations may not overlap); give it an address in another "
                f"/{NODE_BLOCK_PREFIX} of its subnet"
            )
        else:
            blocks[key] = name
    if problems:
        raise DeploymentError(problems)


def check_node_user_data(name: str, render: Callable[[], str]) -> str:
    """Node `name`'s user data as `render` plans it, or a DeploymentError naming the node.

    EC2 refuses user data over 16 KB, and the node's wait condition URL, known only at
    deploy, takes up to SIGNAL_URL_BUDGET bytes of it: with it a node carries about 80
    sources (the compressed config of each takes ~100 bytes), more than any instance
    type's interface in ADDRESSES_PER_ENI, so that limit is normally met first.
    """
    try:
        return render()
    except (RenderError, ValueError) as exc:
        raise DeploymentError([
            f"proxy.nodes.{name}: {exc} ({SIGNAL_URL_BUDGET} bytes are kept for the "
            "URL the node signals its deploy through)"
        ]) from None
