"""Move a source's Elastic IP to another proxy node, when its node or its AZ is lost.

An Elastic IP is regional: it can be associated with a private address of any
interface in the region. The node that owned it may be in a dead AZ, so nothing
here talks to that node or asks CloudFormation anything; the move is two EC2 calls
on the surviving node's interface:

1. take a standby address of the target node's fixed block (quiver.proxy.blocks)
   as a secondary private IP on its interface (AssignPrivateIpAddresses), or
   reuse one a previous run assigned and never associated;
2. associate the Elastic IP with it (AssociateAddress, AllowReassociation).

Running it again after it succeeded changes nothing (the address is already
there); after a failure half way it finishes the move with the address it had
taken. The target node's HAProxy only sends from that address once the policy
says so (sources.<name>.node and local_ip) and is deployed: `result.policy_edit`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from quiver.policy import Policy
from quiver.proxy.blocks import node_block, policy_addresses, standby_addresses

# The tag the CDK app puts on each node's interface (cdk/proxy_tier.py).
NODE_TAG = "quiver:node"


class FailoverError(Exception):
    """The move cannot be made (or was refused); the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Placement:
    node: str | None
    interface: str | None
    private_ip: str | None


@dataclass(frozen=True, slots=True)
class FailoverResult:
    source: str
    public_ip: str
    allocation_id: str
    before: Placement
    after: Placement
    # The standby address was assigned by this run (False: it was there already).
    assigned: bool
    # Nothing was changed: the Elastic IP was already on the target.
    already: bool
    dry_run: bool

    @property
    def policy_edit(self) -> str:
        return (f'[sources.{self.source}] node = "{self.after.node}", '
                f'local_ip = "{self.after.private_ip}"')

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "public_ip": self.public_ip,
            "allocation_id": self.allocation_id,
            "from": {"node": self.before.node, "interface": self.before.interface,
                     "private_ip": self.before.private_ip},
            "to": {"node": self.after.node, "interface": self.after.interface,
                   "private_ip": self.after.private_ip},
            "assigned": self.assigned, "already": self.already, "dry_run": self.dry_run,
            "policy_edit": self.policy_edit,
        }


def failover(
    ec2: Any, policy: Policy, *, source: str, to_node: str, force: bool = False,
    dry_run: bool = False, interface_id: str | None = None,
) -> FailoverResult:
    """Associate source `source`'s Elastic IP with a standby address on node `to_node`."""
    if source not in policy.sources:
        raise FailoverError(f"unknown source {source!r}; the policy's sources: "
                            + ", ".join(sorted(policy.sources)))
    nodes = policy.proxy.nodes
    if to_node not in nodes:
        raise FailoverError(f"unknown proxy node {to_node!r}; the policy's nodes: "
                            + (", ".join(sorted(nodes)) or "none"))
    src = policy.sources[source]
    if src.node is None:
        raise FailoverError(f"sources.{source} is not on a proxy node: nothing to move")
    target = nodes[to_node]
    failed_az = nodes[src.node].az
    if target.az == failed_az and not force:
        raise FailoverError(
            f"node {to_node} is in {target.az}, the AZ of {source}'s node {src.node}: an AZ "
            "outage would take both; pick a node in another AZ, or pass --force (a lost "
            "node in a healthy AZ)")
    allocation = _address(ec2, src.ip, source)
    allocation_id = str(allocation["AllocationId"])
    interface = _interface(ec2, to_node, interface_id)
    interface_az = str(interface["AvailabilityZone"])
    if interface_az != target.az:
        raise FailoverError(
            f"interface {interface['NetworkInterfaceId']} of node {to_node} is in "
            f"{interface_az}, the policy says {target.az}: check --interface-id and the policy")
    before = Placement(node=_owner(ec2, allocation, policy, default=src.node),
                       interface=allocation.get("NetworkInterfaceId"),
                       private_ip=allocation.get("PrivateIpAddress"))
    if before.interface == interface["NetworkInterfaceId"]:
        return FailoverResult(
            source=source, public_ip=src.ip, allocation_id=allocation_id, before=before,
            after=before, assigned=False, already=True, dry_run=dry_run)
    private_ip, assigned = _standby(ec2, policy, to_node, interface)
    after = Placement(node=to_node, interface=str(interface["NetworkInterfaceId"]),
                      private_ip=private_ip)
    if dry_run:
        return FailoverResult(
            source=source, public_ip=src.ip, allocation_id=allocation_id, before=before,
            after=after, assigned=assigned, already=False, dry_run=True)
    if assigned:
        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=after.interface, PrivateIpAddresses=[private_ip],
            AllowReassignment=False)
    ec2.associate_address(
        AllocationId=allocation_id, NetworkInterfaceId=after.interface,
        PrivateIpAddress=private_ip, AllowReassociation=True)
    (now,) = ec2.describe_addresses(AllocationIds=[allocation_id])["Addresses"]
    if now.get("NetworkInterfaceId") != after.interface:
        raise FailoverError(
            f"EC2 accepted the association but {src.ip} is on "
            f"{now.get('NetworkInterfaceId')}; run again")
    return FailoverResult(
        source=source, public_ip=src.ip, allocation_id=allocation_id, before=before,
        after=after, assigned=assigned, already=False, dry_run=False)


def _address(ec2: Any, public_ip: str, source: str) -> dict[str, Any]:
    found = ec2.describe_addresses(
        Filters=[{"Name": "public-ip", "Values": [public_ip]}])["Addresses"]
    if len(found) != 1 or "AllocationId" not in found[0]:
        raise FailoverError(
            f"sources.{source}.ip {public_ip} is not an Elastic IP of this account and "
            "region (check AWS_REGION/AWS_PROFILE and the policy)")
    address: dict[str, Any] = found[0]
    return address


def _interface(ec2: Any, node: str, interface_id: str | None) -> dict[str, Any]:
    if interface_id is not None:
        found = ec2.describe_network_interfaces(NetworkInterfaceIds=[interface_id])
    else:
        found = ec2.describe_network_interfaces(
            Filters=[{"Name": f"tag:{NODE_TAG}", "Values": [node]}])
    interfaces: list[dict[str, Any]] = found["NetworkInterfaces"]
    if not interfaces:
        raise FailoverError(
            f"no network interface tagged {NODE_TAG}={node}: is node {node} deployed? "
            "(or pass --interface-id)")
    if len(interfaces) > 1:
        ids = ", ".join(sorted(i["NetworkInterfaceId"] for i in interfaces))
        raise FailoverError(
            f"several interfaces are tagged {NODE_TAG}={node} ({ids}), one per deployment "
            "of Quiver in this region: pass --interface-id")
    return interfaces[0]


def _owner(ec2: Any, allocation: dict[str, Any], policy: Policy, *, default: str) -> str | None:
    """The node whose interface holds the address now (a source may have moved before)."""
    interface_id = allocation.get("NetworkInterfaceId")
    if interface_id is None:
        return None
    found = ec2.describe_network_interfaces(
        NetworkInterfaceIds=[interface_id])["NetworkInterfaces"]
    for tag in found[0].get("TagSet", []) if found else []:
        if tag.get("Key") == NODE_TAG and tag.get("Value") in policy.proxy.nodes:
            return str(tag["Value"])
    return default


def _standby(ec2: Any, policy: Policy, node: str, interface: dict[str, Any]) -> tuple[str, bool]:
    """(address, whether it must be assigned): an unassociated secondary address of the
    node's block not named by the policy, else the lowest free address of the block."""
    block = node_block(policy.proxy.nodes[node].address)
    placed = policy_addresses(policy)
    for entry in sorted(interface.get("PrivateIpAddresses", []),
                        key=lambda e: ipaddress.ip_address(e["PrivateIpAddress"])):
        ip = ipaddress.ip_address(entry["PrivateIpAddress"])
        if (not entry.get("Primary") and "Association" not in entry and ip in block
                and ip not in placed):
            return str(ip), False
    (subnet,) = ec2.describe_subnets(SubnetIds=[interface["SubnetId"]])["Subnets"]
    in_subnet = ec2.describe_network_interfaces(
        Filters=[{"Name": "subnet-id", "Values": [interface["SubnetId"]]}])["NetworkInterfaces"]
    in_use = {ipaddress.ip_address(e["PrivateIpAddress"])
              for i in in_subnet for e in i.get("PrivateIpAddresses", [])}
    free = standby_addresses(policy, node, subnet=ipaddress.ip_network(subnet["CidrBlock"]),
                             in_use=in_use)
    if not free:
        raise FailoverError(f"node {node}'s block {block} has no free address left")
    return str(free[0]), True
