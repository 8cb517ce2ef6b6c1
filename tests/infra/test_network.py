"""The VPC: explicit AZs, the subnet plan the policy's addresses rely on, endpoints."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import build, only, ref_target, render, resources

from quiver.policy import Policy

pytestmark = pytest.mark.infra

INTERFACE_SERVICES = {
    "sqs", "logs", "ssm", "ssmmessages", "ec2messages", "secretsmanager", "ecr.api", "ecr.dkr",
}


def subnets(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in resources(service, "AWS::EC2::Subnet").items()}


def is_public(props: dict[str, Any]) -> bool:
    return any(t == {"Key": "aws-cdk:subnet-type", "Value": "Public"} for t in props["Tags"])


def test_vpc_spans_the_policy_azs_with_the_planned_cidrs(
    service: dict[str, Any], policy: Policy
) -> None:
    _, vpc = only(service, "AWS::EC2::VPC")
    assert vpc["CidrBlock"] == "10.60.0.0/16"
    public = sorted((p["AvailabilityZone"], p["CidrBlock"]) for p in subnets(service).values()
                    if is_public(p))
    assert public == [
        ("us-east-1a", "10.60.0.0/24"), ("us-east-1b", "10.60.1.0/24"),
        ("us-east-1c", "10.60.2.0/24"),
    ]
    assert {az for az, _ in public} == {node.az for node in policy.proxy.nodes.values()}
    private = [p for p in subnets(service).values() if not is_public(p)]
    assert sorted(p["AvailabilityZone"] for p in private) == ["us-east-1a", "us-east-1b",
                                                               "us-east-1c"]
    for p in (*private, *(p for p in subnets(service).values() if is_public(p))):
        # Nothing gets a public address by accident: sending IPs are associated on purpose.
        assert p["MapPublicIpOnLaunch"] is False


def test_sender_subnets_have_no_route_to_the_internet(service: dict[str, Any]) -> None:
    assert resources(service, "AWS::EC2::NatGateway") == {}
    private_tables = {
        ref_target(a["Properties"]["RouteTableId"])
        for a in resources(service, "AWS::EC2::SubnetRouteTableAssociation").values()
        if not is_public(subnets(service)[ref_target(a["Properties"]["SubnetId"])])
    }
    assert len(private_tables) == 3
    for route in resources(service, "AWS::EC2::Route").values():
        assert ref_target(route["Properties"]["RouteTableId"]) not in private_tables


def test_endpoints_cover_every_aws_api_senders_call(service: dict[str, Any]) -> None:
    endpoints = resources(service, "AWS::EC2::VPCEndpoint").values()
    interface, gateway = set(), set()
    for props in (e["Properties"] for e in endpoints):
        name = render(props["ServiceName"]).split(".", 3)[-1]
        if props.get("VpcEndpointType") == "Interface":
            interface.add(name)
            assert props["PrivateDnsEnabled"] is True
            # In the sender subnets only: the public subnets keep their fixed addresses free.
            for subnet in props["SubnetIds"]:
                assert not is_public(subnets(service)[ref_target(subnet)])
        else:
            gateway.add(name)
    assert interface == INTERFACE_SERVICES
    assert gateway == {"s3", "dynamodb"}


def test_proxy_addresses_are_inside_their_az_subnet(
    service: dict[str, Any], policy: Policy
) -> None:
    all_subnets = subnets(service)
    interfaces = resources(service, "AWS::EC2::NetworkInterface")
    assert len(interfaces) == len(policy.proxy.nodes)
    for name, node in policy.proxy.nodes.items():
        (props,) = [
            i["Properties"] for i in interfaces.values()
            if {"Key": "Name", "Value": f"quiver-{name}"} in i["Properties"]["Tags"]
        ]
        subnet = all_subnets[ref_target(props["SubnetId"])]
        assert subnet["AvailabilityZone"] == node.az
        cidr = ipaddress.ip_network(subnet["CidrBlock"])
        addresses = [a["PrivateIpAddress"] for a in props["PrivateIpAddresses"]]
        expected = [node.address, *(
            s.local_ip for s in policy.sources.values() if s.node == name and s.local_ip
        )]
        assert sorted(addresses) == sorted(expected)
        for address in addresses:
            assert ipaddress.ip_address(address) in cidr, (name, address, cidr)


def test_fixed_addresses_are_reserved_in_their_subnet(
    service: dict[str, Any], policy: Policy
) -> None:
    reservations = resources(service, "AWS::EC2::SubnetCidrReservation")
    assert len(reservations) == len(policy.proxy.nodes)
    interfaces = resources(service, "AWS::EC2::NetworkInterface")
    for props in (r["Properties"] for r in reservations.values()):
        assert props["ReservationType"] == "explicit"
        block = ipaddress.ip_network(props["Cidr"])
        (interface,) = [i["Properties"] for i in interfaces.values()
                        if i["Properties"]["SubnetId"] == props["SubnetId"]]
        for address in interface["PrivateIpAddresses"]:
            assert ipaddress.ip_address(address["PrivateIpAddress"]) in block


def test_an_address_outside_its_subnet_fails_synth(
    policy_variant: Callable[..., Path], tmp_path: Path
) -> None:
    path = policy_variant(('local_ip = "10.60.2.11"', 'local_ip = "10.60.7.11"'))
    with pytest.raises(ValueError) as error:
        build(path, tmp_path / "out")
    message = str(error.value)
    assert "sources.bulk3.local_ip: 10.60.7.11 is outside us-east-1c's subnet 10.60.2.0/24" in (
        message
    )


def test_an_address_aws_reserves_fails_synth(
    policy_variant: Callable[..., Path], tmp_path: Path
) -> None:
    path = policy_variant(('address = "10.60.1.10"', 'address = "10.60.1.2"'))
    with pytest.raises(ValueError, match=r"proxy.nodes.egress-b.address: 10.60.1.2 is reserved"):
        build(path, tmp_path / "out")
