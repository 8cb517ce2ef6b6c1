"""The egress proxy nodes: addresses, security groups, IMDSv2, role, user data, alarms."""

from __future__ import annotations

import email
import itertools
from typing import Any

import pytest
import yaml
from infra_helpers import output_source, ref_target, render, resources, statements

from cdk.logical_ids import logical_id_part
from cdk.proxy_tier import SCRIPT_ROOM
from proxy_tier.bootstrap import render_user_data
from quiver.policy import Policy

pytestmark = pytest.mark.infra

ANYWHERE = {"0.0.0.0/0", "::/0"}


def to_anywhere(rule: dict[str, Any]) -> bool:
    return any(rule.get(key) in ANYWHERE for key in ("CidrIp", "CidrIpv6")
               if isinstance(rule.get(key), str))


def security_group_id(service: dict[str, Any], description_prefix: str) -> str:
    (logical_id,) = [
        k for k, r in resources(service, "AWS::EC2::SecurityGroup").items()
        if r["Properties"]["GroupDescription"].startswith(description_prefix)
    ]
    return logical_id


def rules(service: dict[str, Any], group: str, direction: str) -> list[dict[str, Any]]:
    """Inline and standalone rules of one security group ('Ingress' or 'Egress')."""
    inline = service["Resources"][group]["Properties"].get(f"SecurityGroup{direction}", [])
    standalone = [
        r["Properties"] for r in resources(service, f"AWS::EC2::SecurityGroup{direction}").values()
        if ref_target(r["Properties"]["GroupId"]) == group
    ]
    return [*inline, *standalone]


def instances(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Proxy instances by node name."""
    found = {}
    for resource in resources(service, "AWS::EC2::Instance").values():
        tags = {t["Key"]: t["Value"] for t in resource["Properties"]["Tags"]}
        found[tags["quiver:node"]] = resource["Properties"]
    return found


def test_one_instance_per_node_with_imdsv2_and_no_ssh(
    service: dict[str, Any], policy: Policy
) -> None:
    nodes = instances(service)
    assert set(nodes) == set(policy.proxy.nodes)
    for props in nodes.values():
        assert props["MetadataOptions"]["HttpTokens"] == "required"
        assert props["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert "KeyName" not in props
        assert props["ImageId"].startswith(
            "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023"
        )
        assert props["ImageId"].endswith("arm64") == props["InstanceType"].startswith("c7g")
        (volume,) = props["BlockDeviceMappings"]
        assert volume["Ebs"]["Encrypted"] is True


def test_user_data_runs_the_rendered_bootstrap_at_every_boot(
    service: dict[str, Any], policy: Policy
) -> None:
    for name, props in instances(service).items():
        user_data = render(props["UserData"]["Fn::Base64"])
        assert len(user_data.encode()) <= 16 * 1024
        message = email.message_from_string(user_data)
        assert message.is_multipart()
        parts = {part.get_content_type(): part.get_payload() for part in message.walk()
                 if not part.is_multipart()}
        assert set(parts) == {"text/cloud-config", "text/x-shellscript"}
        config = yaml.safe_load(parts["text/cloud-config"])
        assert config == {"cloud_final_modules": [["scripts-user", "always"]]}
        # The bootstrap exactly as proxy_tier renders it, signalling this node's
        # wait condition handle (its presigned URL, known at deploy).
        (handle,) = [k for k in resources(service, "AWS::CloudFormation::WaitConditionHandle")
                     if k.startswith(f"EgressNode{logical_id_part(name)}Ready")]
        assert parts["text/x-shellscript"] == render_user_data(
            policy, name, signal_url=f"${{{handle}}}",
            log_group="/quiver/QuiverService/egress-haproxy", room=SCRIPT_ROOM)


def test_nodes_are_updated_one_at_a_time(service: dict[str, Any], policy: Policy) -> None:
    ids = {tags["quiver:node"]: k for k, tags in (
        (k, {t["Key"]: t["Value"] for t in r["Properties"]["Tags"]})
        for k, r in resources(service, "AWS::EC2::Instance").items())}
    names = sorted(ids, key=lambda n: (policy.proxy.nodes[n].az, n))
    conditions = resources(service, "AWS::CloudFormation::WaitCondition")
    for earlier, later in itertools.pairwise(names):
        (ready,) = [k for k, r in conditions.items() if r["DependsOn"] == [ids[earlier]]]
        assert ready in service["Resources"][ids[later]]["DependsOn"]


def test_sources_elastic_ips_are_associated_with_their_local_ip(
    service: dict[str, Any], stateful: dict[str, Any], policy: Policy
) -> None:
    interfaces = resources(service, "AWS::EC2::NetworkInterface")
    associations = resources(service, "AWS::EC2::EIPAssociation")
    assert len(associations) == len(policy.sources)
    seen = set()
    for props in (a["Properties"] for a in associations.values()):
        allocation = output_source(stateful, props["AllocationId"])
        eip = stateful["Resources"][ref_target(allocation)]
        tags = {t["Key"]: t["Value"] for t in eip["Properties"]["Tags"]}
        source = policy.sources[tags["quiver:source"]]
        interface = interfaces[ref_target(props["NetworkInterfaceId"])]["Properties"]
        assert {"Key": "Name", "Value": f"quiver-{source.node}"} in interface["Tags"]
        assert props["PrivateIpAddress"] == source.local_ip
        seen.add(source.name)
    assert seen == set(policy.sources)


def test_frontends_and_health_are_reachable_only_from_senders(
    service: dict[str, Any], policy: Policy
) -> None:
    proxies = security_group_id(service, "Quiver egress proxies")
    senders = security_group_id(service, "Quiver senders")
    ingress = rules(service, proxies, "Ingress")
    assert sorted((r["FromPort"], r["ToPort"]) for r in ingress) == sorted(
        [(policy.proxy.frontend_port,) * 2, (policy.proxy.health_port,) * 2]
    )
    for rule in ingress:
        assert ref_target(rule["SourceSecurityGroupId"]) == senders
        assert "CidrIp" not in rule and "CidrIpv6" not in rule


def test_no_security_group_accepts_the_internet(service: dict[str, Any]) -> None:
    for group in resources(service, "AWS::EC2::SecurityGroup"):
        for rule in rules(service, group, "Ingress"):
            assert not to_anywhere(rule), group


def test_proxy_egress_is_smtp_to_anywhere_and_https_to_aws_only(
    service: dict[str, Any], policy: Policy
) -> None:
    proxies = security_group_id(service, "Quiver egress proxies")
    egress = rules(service, proxies, "Egress")
    internet = [r for r in egress if to_anywhere(r)]
    assert sorted(r["FromPort"] for r in internet) == sorted(policy.proxy.allowed_ports)
    assert all(r["IpProtocol"] == "tcp" and r["FromPort"] == r["ToPort"] for r in internet)
    others = [r for r in egress if not to_anywhere(r)]
    assert others and all((r["FromPort"], r["ToPort"]) == (443, 443) for r in others)
    endpoint_sg = security_group_id(service, "Quiver interface endpoints")
    for rule in others:
        assert ("DestinationPrefixListId" in rule
                or ref_target(rule["DestinationSecurityGroupId"]) == endpoint_sg)


def test_instance_role_is_session_manager_and_its_own_log_group_only(
    service: dict[str, Any]
) -> None:
    (profile,) = resources(service, "AWS::IAM::InstanceProfile").values()
    (role_ref,) = profile["Properties"]["Roles"]
    role_id = ref_target(role_ref)
    role = service["Resources"][role_id]["Properties"]
    (managed,) = role["ManagedPolicyArns"]
    assert "AmazonSSMManagedInstanceCore" in str(managed)
    assert "Policies" not in role
    (log_group_id,) = [k for k, r in resources(service, "AWS::Logs::LogGroup").items()
                       if r["Properties"].get("LogGroupName")
                       == "/quiver/QuiverService/egress-haproxy"]
    granted = []
    for policy_id, policy in resources(service, "AWS::IAM::Policy").items():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            granted += [s for logical_id, s in statements(service) if logical_id == policy_id]
    (statement,) = granted
    assert sorted(statement["Action"]) == [
        "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    assert sorted(render(r) for r in statement["Resource"]) == [
        f"${{{log_group_id}.Arn}}", f"${{{log_group_id}.Arn}}:*"]


def test_each_node_has_a_status_check_alarm(service: dict[str, Any], policy: Policy) -> None:
    instance_ids = {
        k: r["Properties"]["Tags"] for k, r in resources(service, "AWS::EC2::Instance").items()
    }
    watched = set()
    for alarm in resources(service, "AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if props.get("MetricName") == "StatusCheckFailed":
            (dimension,) = props["Dimensions"]
            watched.add(ref_target(dimension["Value"]))
            assert props["TreatMissingData"] == "breaching"
            assert props["AlarmActions"]
    assert watched == set(instance_ids)
    assert len(watched) == len(policy.proxy.nodes)
