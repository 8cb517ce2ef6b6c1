"""What a valid policy must also satisfy to be deployed by this app.

`quiver.policy` validates a policy for any host; a deployed sender has more limits:
it runs on Fargate in subnets without an internet route, reads DKIM keys from
Secrets Manager, and is stopped by ECS after at most 120 s. Each check names the
policy key to change, so a policy that would deploy a broken system fails synth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quiver.policy import Policy

# ECS waits this long after SIGTERM before SIGKILL: the sender's drain deadline plus
# time to make unfinished messages visible again (up to intake.max_inflight_messages,
# in batches of 10) and flush the last event batch.
STOP_MARGIN_S = 20
# Fargate refuses a container stopTimeout above 120 s.
FARGATE_MAX_STOP_TIMEOUT_S = 120

_AZ = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$")


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
    availability_zones: tuple[str, ...]


def stop_timeout_seconds(policy: Policy) -> int:
    """The sender container's stopTimeout: the policy's drain deadline plus a margin."""
    return int(-(-policy.intake.drain_deadline // 1)) + STOP_MARGIN_S


# Fargate task sizes, in vCPUs (each with its own memory range).
FARGATE_VCPUS = (1, 2, 4, 8, 16)
MEMORY_MIB_PER_VCPU = 2048


def task_vcpus(policy: Policy) -> int:
    """vCPUs for a sender task: one for the event loop, one per DKIM signing thread
    (`delivery.signing_threads`), rounded up to a Fargate size."""
    wanted = 1 + policy.delivery.signing_threads
    for size in FARGATE_VCPUS:
        if size >= wanted:
            return size
    return FARGATE_VCPUS[-1]


def check_deployable(
    policy: Policy, *, dkim_secret_prefix: str, return_path_secret_prefix: str = "",
    origin: str = "policy",
) -> Placement:
    """Check the deploy-only rules; return the region and AZs the policy implies."""
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
    for name, node in nodes.items():
        match = _AZ.match(node.az)
        if match is None:
            problems.append(
                f"proxy.nodes.{name}.az: {node.az!r} is not an AZ name like 'us-east-1a'"
            )
        else:
            regions.add(match.group(1))
    if len(regions) > 1:
        problems.append(
            "proxy.nodes: all nodes must be in one region, found " + ", ".join(sorted(regions))
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
    return Placement(region=regions.pop(), availability_zones=azs)
