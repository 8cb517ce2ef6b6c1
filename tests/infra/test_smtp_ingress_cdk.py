"""The SMTP ingress stack: NLB with PROXY v2 to Fargate, least privilege, alarms, scaling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template
from infra_helpers import POLICY_PATH, ROOT, cdk_context, only, resources

from cdk.policy_object import POLICY_KEY
from cdk.smtp_ingress import SUBMISSION_PORT
from cdk.stacks import add_quiver_stacks
from quiver import settings
from quiver.ingress import smtp_metrics

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def ingress(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ingress")
    app = App(context=cdk_context(), outdir=str(tmp / "out"))
    stacks = add_quiver_stacks(app, policy_path=POLICY_PATH, repo_root=ROOT,
                               smtp_tls_secret="quiver/smtp-ingress/tls",
                               smtp_allowed_networks=("10.0.0.0/8=acme",))
    return Template.from_stack(stacks.ingress).to_json()


def test_nlb_passes_tcp_with_proxy_protocol_v2_to_the_tasks(ingress: dict[str, Any]) -> None:
    _, lb = only(ingress, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert lb["Type"] == "network" and lb["Scheme"] == "internal"
    _, listener = only(ingress, "AWS::ElasticLoadBalancingV2::Listener")
    assert (listener["Port"], listener["Protocol"]) == (SUBMISSION_PORT, "TCP")
    _, group = only(ingress, "AWS::ElasticLoadBalancingV2::TargetGroup")
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    assert attributes["proxy_protocol_v2.enabled"] == "true"
    assert attributes["preserve_client_ip.enabled"] == "false"
    assert group["TargetType"] == "ip"


def test_the_listener_requires_proxy_headers_and_reads_its_certificate(
        ingress: dict[str, Any]) -> None:
    _, task = only(ingress, "AWS::ECS::TaskDefinition")
    (container,) = task["ContainerDefinitions"]
    command = container["Command"]
    assert command[:2] == ["ingress", "smtp"] and "--proxy-protocol" in command
    assert command[command.index("--tls-secret") + 1] == "quiver/smtp-ingress/tls"
    assert command[command.index("--allow-network") + 1] == "10.0.0.0/8=acme"
    # The listener's own drain ends before ECS's SIGKILL.
    stop = int(command[command.index("--stop-timeout") + 1])
    assert stop < container["StopTimeout"]
    assert container["ReadonlyRootFilesystem"] is True


def test_the_task_role_may_enqueue_spill_and_read_its_certificate_only(
        ingress: dict[str, Any]) -> None:
    actions: dict[str, list[Any]] = {}
    for policy in resources(ingress, "AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "Sid" in statement:
                acts = statement["Action"]
                actions[statement["Sid"]] = acts if isinstance(acts, list) else [acts]
    assert actions["EnqueueOutbound"] == ["sqs:SendMessage"]
    assert actions["SpillLargeBodies"] == ["s3:PutObject"]
    assert actions["ReadTlsCertificate"] == ["secretsmanager:GetSecretValue"]
    # The tenant keys are only read (AUTH), and the one object read is the policy.
    assert actions["ReadTenantKeys"] == ["dynamodb:GetItem", "dynamodb:Query"]
    assert actions["ReadPolicy"] == ["s3:GetObject"]
    text = json.dumps(resources(ingress, "AWS::IAM::Policy"))
    for forbidden in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "dynamodb:PutItem",
                      "dynamodb:DeleteItem", "secretsmanager:*", "s3:*"):
        assert forbidden not in text
    assert text.count("s3:GetObject") == 1


def test_the_listener_knows_the_tenants_and_their_keys(ingress: dict[str, Any]) -> None:
    """AUTH needs the key table and the sender-domain check the policy's [tenants]:
    without either, every login would be refused or every domain allowed."""
    _, task = only(ingress, "AWS::ECS::TaskDefinition")
    (container,) = task["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env[settings.ENV_TENANT_KEYS_TABLE]
    command = container["Command"]
    # The policy object the senders read: s3://<policy bucket>/<POLICY_KEY>.
    source = json.dumps(command[command.index("--config") + 1])
    assert '"s3://"' in source and source.endswith(f'"/{POLICY_KEY}"]]}}')


def test_alarms_on_refused_logins_and_reply_classes(ingress: dict[str, Any]) -> None:
    alarmed = {a["Properties"]["MetricName"]: a["Properties"]
               for a in resources(ingress, "AWS::CloudWatch::Alarm").values()}
    assert set(alarmed) == {smtp_metrics.AUTH_REFUSED, smtp_metrics.REPLIES_4XX,
                            smtp_metrics.REPLIES_5XX}
    for alarm in alarmed.values():
        assert alarm["Namespace"] == "Quiver"
        assert alarm["Dimensions"] == [{"Name": "Service", "Value": "smtp-ingress"}]
        assert alarm["AlarmActions"] and alarm["OKActions"]


def test_scales_on_connections_per_task(ingress: dict[str, Any]) -> None:
    _, scaling = only(ingress, "AWS::ApplicationAutoScaling::ScalingPolicy")
    config = scaling["TargetTrackingScalingPolicyConfiguration"]
    metric = config["CustomizedMetricSpecification"]
    assert (metric["MetricName"], metric["Statistic"]) == (smtp_metrics.CONNECTIONS, "Average")
    _, target = only(ingress, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] >= 2


def test_without_a_certificate_no_secret_is_granted(tmp_path: Path) -> None:
    app = App(context=cdk_context(), outdir=str(tmp_path / "out"))
    stacks = add_quiver_stacks(app, policy_path=POLICY_PATH, repo_root=ROOT)
    template = Template.from_stack(stacks.ingress).to_json()
    assert "secretsmanager" not in json.dumps(resources(template, "AWS::IAM::Policy"))
    _, task = only(template, "AWS::ECS::TaskDefinition")
    assert "--tls-secret" not in task["ContainerDefinitions"][0]["Command"]
