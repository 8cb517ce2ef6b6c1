"""`quiver proxy failover` as an operator runs it (a child process, boto3's AWS_*
variables) against EC2 on moto's server: two nodes in two AZs, a source's Elastic
IP on node A's secondary address; after the failover DescribeAddresses shows it on
node B's interface at a standby address of B's block, and running it again changes
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quiver.devstack.moto_server import MotoServer, aws_env, client, start_moto

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Rig:
    server: MotoServer
    ec2: Any
    policy: Path
    eni: dict[str, str]
    allocation_id: str
    public_ip: str


POLICY = """\
default_pool = "transactional"

[proxy.nodes.egress-a]
az = "us-east-1a"
address = "10.60.0.10"

[proxy.nodes.egress-b]
az = "us-east-1b"
address = "10.60.1.10"

[proxy.nodes.egress-b2]
az = "us-east-1b"
address = "10.60.1.40"

[sources.tx1]
ip = "{ip}"
local_ip = "10.60.0.11"
node = "egress-a"
ehlo = "tx1.mail.example.com"

[sources.tx2]
ip = "{other_ip}"
local_ip = "10.60.1.11"
node = "egress-b"
ehlo = "tx2.mail.example.com"

[pools.transactional]
sources = {{ tx1 = 1, tx2 = 1 }}
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("failover")
    server = start_moto(log_dir=work)
    try:
        ec2 = client(server.endpoint, "ec2")
        vpc = ec2.create_vpc(CidrBlock="10.60.0.0/16")["Vpc"]["VpcId"]
        eni: dict[str, str] = {}
        for node, az, cidr, addresses in (
            ("egress-a", "us-east-1a", "10.60.0.0/24", ["10.60.0.10", "10.60.0.11"]),
            ("egress-b", "us-east-1b", "10.60.1.0/24", ["10.60.1.10", "10.60.1.11"]),
        ):
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=az)
            interface = ec2.create_network_interface(
                SubnetId=subnet["Subnet"]["SubnetId"],
                PrivateIpAddresses=[{"PrivateIpAddress": a, "Primary": i == 0}
                                    for i, a in enumerate(addresses)],
                TagSpecifications=[{"ResourceType": "network-interface",
                                    "Tags": [{"Key": "quiver:node", "Value": node}]}],
            )["NetworkInterface"]
            eni[node] = interface["NetworkInterfaceId"]
            image = ec2.describe_images()["Images"][0]["ImageId"]
            ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="c7g.large",
                              NetworkInterfaces=[{"DeviceIndex": 0,
                                                  "NetworkInterfaceId": eni[node]}])
        tx1 = ec2.allocate_address(Domain="vpc")
        tx2 = ec2.allocate_address(Domain="vpc")
        ec2.associate_address(AllocationId=tx1["AllocationId"], NetworkInterfaceId=eni["egress-a"],
                              PrivateIpAddress="10.60.0.11")
        ec2.associate_address(AllocationId=tx2["AllocationId"], NetworkInterfaceId=eni["egress-b"],
                              PrivateIpAddress="10.60.1.11")
        policy = work / "policy.toml"
        policy.write_text(POLICY.format(ip=tx1["PublicIp"], other_ip=tx2["PublicIp"]))
        yield Rig(server=server, ec2=ec2, policy=policy, eni=eni,
                  allocation_id=tx1["AllocationId"], public_ip=tx1["PublicIp"])
    finally:
        server.stop()


def quiver(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **aws_env(rig.server.endpoint)}
    return subprocess.run(
        [sys.executable, "-m", "quiver", "proxy", "failover", "--config", str(rig.policy),
         *args], env=env, capture_output=True, text=True, timeout=120)


def where(rig: Rig) -> str:
    """The interface the Elastic IP is associated with. (moto 5.2 reports the
    interface's primary address as the association's PrivateIpAddress whatever was
    asked, so the secondary address is checked on the interface itself.)"""
    (address,) = rig.ec2.describe_addresses(AllocationIds=[rig.allocation_id])["Addresses"]
    return str(address.get("NetworkInterfaceId", ""))


def addresses_of(rig: Rig, node: str) -> list[str]:
    (interface,) = rig.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[rig.eni[node]])["NetworkInterfaces"]
    return sorted(a["PrivateIpAddress"] for a in interface["PrivateIpAddresses"])


def test_failover_moves_the_elastic_ip_to_a_standby_address_in_another_az(rig: Rig) -> None:
    # A target in the failed node's own AZ is refused without --force (an AZ outage
    # would take both): tx2's node egress-b and egress-b2 share us-east-1b.
    same_az = quiver(rig, "--source", "tx2", "--to-node", "egress-b2")
    assert same_az.returncode == 2
    assert "pick a node in another AZ, or pass --force" in same_az.stderr

    dry = quiver(rig, "--source", "tx1", "--to-node", "egress-b", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    assert where(rig) == rig.eni["egress-a"]  # nothing moved
    assert addresses_of(rig, "egress-b") == ["10.60.1.10", "10.60.1.11"]

    moved = quiver(rig, "--source", "tx1", "--to-node", "egress-b", "--json")
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    # The lowest free address of egress-b's block 10.60.1.0/27, past AWS's first four
    # and the policy's .10 and .11.
    assert result["to"] == {"node": "egress-b", "interface": rig.eni["egress-b"],
                            "private_ip": "10.60.1.4"}
    assert (result["from"]["node"], result["from"]["interface"]) == (
        "egress-a", rig.eni["egress-a"])
    assert result["assigned"] is True
    assert result["to"] == planned["to"]
    assert where(rig) == rig.eni["egress-b"]
    assert addresses_of(rig, "egress-b") == ["10.60.1.10", "10.60.1.11", "10.60.1.4"]
    assert result["policy_edit"] == '[sources.tx1] node = "egress-b", local_ip = "10.60.1.4"'

    again = quiver(rig, "--source", "tx1", "--to-node", "egress-b")
    assert again.returncode == 0, again.stderr
    assert "is already on node egress-b" in again.stdout
    assert where(rig) == rig.eni["egress-b"]
    # No second standby address taken.
    assert addresses_of(rig, "egress-b") == ["10.60.1.10", "10.60.1.11", "10.60.1.4"]


def test_unknown_source_node_and_address_are_refused_with_what_exists(rig: Rig) -> None:
    unknown = quiver(rig, "--source", "tx9", "--to-node", "egress-b")
    assert unknown.returncode == 2
    assert "unknown source 'tx9'; the policy's sources: tx1, tx2" in unknown.stderr
    no_node = quiver(rig, "--source", "tx1", "--to-node", "egress-z")
    assert no_node.returncode == 2
    assert "unknown proxy node 'egress-z'" in no_node.stderr
    undeployed = quiver(rig, "--source", "tx2", "--to-node", "egress-b2", "--force")
    assert undeployed.returncode == 2
    assert "no network interface tagged quiver:node=egress-b2" in undeployed.stderr
