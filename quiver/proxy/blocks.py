"""Each proxy node's fixed block of private addresses.

A node's addresses (its primary one, its sources' `local_ip`s, and standby
addresses a failover takes) all come from one block that never changes: the
aligned /27 holding the node's primary address. The CDK app reserves that block
in the subnet (an explicit subnet CIDR reservation) so EC2 never hands its
addresses to another interface, and because a reservation's CIDR cannot change in
place (CloudFormation would create the new one first, and it overlaps the old),
the block is sized once for the most a node can carry: 32 addresses is more than
one interface of any instance type this tier uses can hold (30 on c7g.4xlarge).
"""

from __future__ import annotations

import ipaddress

from quiver.policy import Policy

NODE_BLOCK_PREFIX = 27

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def node_block(address: str) -> Network:
    """The fixed block of the node whose primary address is `address`."""
    ip = ipaddress.ip_address(address)
    prefix = NODE_BLOCK_PREFIX if ip.version == 4 else 128 - (32 - NODE_BLOCK_PREFIX)
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


def policy_addresses(policy: Policy) -> set[Address]:
    """Every private address the policy places: nodes' primaries and sources' local_ips."""
    found = {ipaddress.ip_address(n.address) for n in policy.proxy.nodes.values()}
    found |= {ipaddress.ip_address(s.local_ip) for s in policy.sources.values() if s.local_ip}
    return found


def standby_addresses(
    policy: Policy, node: str, *, subnet: Network, in_use: set[Address],
) -> list[Address]:
    """Addresses of `node`'s block a failover may take, lowest first: inside the
    subnet, not kept by AWS (the subnet's first four and its last), not placed by the
    policy and not `in_use` on any interface."""
    block = node_block(policy.proxy.nodes[node].address)
    placed = policy_addresses(policy)
    first_usable = int(subnet.network_address) + 4
    out = []
    for ip in block:
        if (ip not in subnet or int(ip) < first_usable or ip == subnet.broadcast_address
                or ip in placed or ip in in_use):
            continue
        out.append(ip)
    return out
