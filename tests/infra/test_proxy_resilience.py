"""Proxy-tier resilience and update paths: termination protection, EC2 recover and
reboot actions, HAProxy logs shipped, dependencies on the internet gateway and the S3
route, pinned logical IDs, and the synth refusals (addresses per interface, the fixed
block, a removed Elastic IP, a node replacement with its interface at index 0)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from infra_helpers import (
    POLICY_PATH,
    ROOT,
    build,
    cdk_context,
    ref_target,
    render,
    resources,
)

from cdk.deploy_checks import DeploymentError, check_proxy_capacity
from cdk.deployed_record import record_path
from cdk.stacks import add_quiver_stacks
from quiver.policy import Policy

pytestmark = pytest.mark.infra

NODES = {"egress-a": "EgressA", "egress-b": "EgressB", "egress-c": "EgressC"}


def test_instances_are_protected_and_ship_haproxy_logs(service: dict[str, Any]) -> None:
    instances = resources(service, "AWS::EC2::Instance")
    assert sorted(instances) == sorted(f"EgressNode{p}Instance" for p in NODES.values())
    for instance in instances.values():
        assert instance["Properties"]["DisableApiTermination"] is True
        script = render(instance["Properties"]["UserData"]["Fn::Base64"])
        assert "StandardOutput=append:/var/log/haproxy/haproxy.log" in script
        assert '"log_group_name": "/quiver/QuiverService/egress-haproxy"' in script


def test_status_checks_recover_and_reboot_each_node(service: dict[str, Any]) -> None:
    alarms = resources(service, "AWS::CloudWatch::Alarm")
    for part in NODES.values():
        instance = f"EgressNode{part}Instance"
        for what, metric, action in (
            ("Recover", "StatusCheckFailed_System", "recover"),
            ("Reboot", "StatusCheckFailed_Instance", "reboot"),
        ):
            props = alarms[f"EgressNode{part}{what}"]["Properties"]
            assert props["MetricName"] == metric
            (dimension,) = props["Dimensions"]
            assert ref_target(dimension["Value"]) == instance
            (arn,) = props["AlarmActions"]
            assert arn == f"arn:aws:automate:us-east-1:ec2:{action}"


def test_associations_wait_for_the_gateway_and_instances_for_the_s3_route(
    service: dict[str, Any], policy: Policy,
) -> None:
    (attachment,) = resources(service, "AWS::EC2::VPCGatewayAttachment")
    s3 = [k for k, r in resources(service, "AWS::EC2::VPCEndpoint").items()
          if "s3" in json.dumps(r["Properties"]["ServiceName"])]
    (s3_endpoint,) = s3
    associations = resources(service, "AWS::EC2::EIPAssociation")
    assert len(associations) == len(policy.sources)
    for association in associations.values():
        assert attachment in association["DependsOn"]
    for instance in resources(service, "AWS::EC2::Instance").values():
        assert s3_endpoint in instance["DependsOn"]


def test_node_resources_have_pinned_logical_ids_and_fixed_blocks(
    service: dict[str, Any], policy: Policy,
) -> None:
    for name, part in NODES.items():
        reservation = service["Resources"][f"EgressNode{part}Reservation"]["Properties"]
        address = policy.proxy.nodes[name].address
        assert reservation["Cidr"] == address.rsplit(".", 1)[0] + ".0/27"
        interface = service["Resources"][f"EgressNode{part}Interface"]["Properties"]
        assert {"Key": "quiver:node", "Value": name} in interface["Tags"]
        (attachment,) = service["Resources"][f"EgressNode{part}Instance"]["Properties"][
            "NetworkInterfaces"]
        assert attachment["DeviceIndex"] == "0"
        assert ref_target(attachment["NetworkInterfaceId"]) == f"EgressNode{part}Interface"
    assert "EgressNodeEgressATx1Association" in service["Resources"]


def test_more_sources_than_an_interface_carries_fail_synth(policy: Policy) -> None:
    with pytest.raises(DeploymentError) as error:
        check_proxy_capacity(policy, instance_type="t3.micro")
    assert ("proxy.nodes.egress-a: 1 primary + 2 source addresses exceed t3.micro's 2 "
            "addresses per interface") in str(error.value)
    with pytest.raises(DeploymentError, match="add it to ADDRESSES_PER_ENI"):
        check_proxy_capacity(policy, instance_type="x9z.large")


def test_an_address_outside_the_nodes_fixed_block_fails_synth(
    policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    path = policy_variant(('local_ip = "10.60.0.12"', 'local_ip = "10.60.0.40"'))
    with pytest.raises(DeploymentError) as error:
        build(path, tmp_path / "out")
    assert ("sources.bulk1.local_ip: 10.60.0.40 is outside node egress-a's fixed block "
            "10.60.0.0/27") in str(error.value)
    assert "cannot grow in place" in str(error.value)


def test_two_nodes_sharing_a_block_fail_synth(
    policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    path = policy_variant(('[proxy.nodes.egress-c]\naz = "us-east-1c"',
                           '[proxy.nodes.egress-d]\naz = "us-east-1a"\naddress = "10.60.0.20"\n\n'
                           '[proxy.nodes.egress-c]\naz = "us-east-1c"'))
    with pytest.raises(DeploymentError, match=r"proxy.nodes.egress-d: its fixed block "
                       r"10.60.0.0/27 is node egress-a's too"):
        build(path, tmp_path / "out")


def with_record(path: Path) -> None:
    shutil.copy(record_path(POLICY_PATH), record_path(path))


def test_a_renamed_source_fails_synth_unless_its_removal_is_allowed(
    policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    path = policy_variant(("[sources.bulk3]", "[sources.bulk9]"),
                          ("bulk3 = 1", "bulk9 = 1"))
    with_record(path)
    with pytest.raises(DeploymentError) as error:
        build(path, tmp_path / "out")
    assert ("sources.bulk3: gone from the policy, but its Elastic IP EgressIpBulk3 is "
            "deployed") in str(error.value)
    assert "-c quiver:allow-remove-egress-ip=bulk3" in str(error.value)
    app = App(context={**cdk_context(), "quiver:allow-remove-egress-ip": "bulk3"},
              outdir=str(tmp_path / "out2"))
    stacks = add_quiver_stacks(app, policy_path=path, repo_root=ROOT)
    assert set(stacks.stateful.addresses.by_source) == {"tx1", "tx2", "bulk1", "bulk2", "bulk9"}


def test_a_node_image_change_fails_synth_with_the_two_step_procedure(
    policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    path = policy_variant()
    record = json.loads(record_path(POLICY_PATH).read_text())
    record["nodes"]["egress-b"]["image"] = "resolve:ssm:/some/older/image"
    record_path(path).write_text(json.dumps(record))
    with pytest.raises(DeploymentError) as error:
        build(path, tmp_path / "out")
    message = str(error.value)
    assert "proxy.nodes.egress-b: its image changes" in message
    assert "holds the node's interface at device index 0" in message
    assert "Do it in two deploys" in message


def test_the_committed_record_matches_the_example_policy(tmp_path: Path) -> None:
    from cdk.deployed_record import current_record, load_record
    from cdk.proxy_tier import DEFAULT_INSTANCE_TYPE, image_for
    from quiver.policy import load_policy

    assert load_record(record_path(POLICY_PATH)) == current_record(
        load_policy(POLICY_PATH), image=image_for(DEFAULT_INSTANCE_TYPE))
