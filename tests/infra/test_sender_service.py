"""The sender service: rollout safety, stop timeout, scaling, environment, network, IAM."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import build, only, output_source, ref_target, resources

from cdk.deploy_checks import FARGATE_MAX_STOP_TIMEOUT_S, DeploymentError
from quiver import settings
from quiver.policy import Policy
from quiver.policy.model import Intake

pytestmark = pytest.mark.infra


def container(service: dict[str, Any]) -> dict[str, Any]:
    _, task = only(service, "AWS::ECS::TaskDefinition")
    (definition,) = task["ContainerDefinitions"]
    return definition


def test_stop_timeout_is_fargates_limit_with_a_drain_deadline_near_it(
    service: dict[str, Any], policy: Policy
) -> None:
    # Slow receivers get 100 s to finish their transaction, the rest of Fargate's
    # 120 s goes to making unfinished messages visible and flushing events.
    assert policy.intake.drain_deadline == 100 == Intake().drain_deadline
    assert container(service)["StopTimeout"] == 120 == FARGATE_MAX_STOP_TIMEOUT_S


def test_stop_timeout_follows_the_policy(
    policy_variant: Callable[..., Path], tmp_path: Path
) -> None:
    from aws_cdk.assertions import Template

    path = policy_variant(('drain_deadline = "100s"', 'drain_deadline = "55s"'))
    template = Template.from_stack(build(path, tmp_path / "out").service).to_json()
    assert container(template)["StopTimeout"] == 75


@pytest.mark.parametrize("line", ["signing_processes = 2", "signing_threads = 2"])
def test_a_task_has_a_vcpu_for_the_loop_and_one_per_signing_worker(
    service: dict[str, Any], policy: Policy, policy_variant: Callable[..., Path],
    tmp_path: Path, line: str,
) -> None:
    from aws_cdk.assertions import Template

    _, task = only(service, "AWS::ECS::TaskDefinition")
    assert (policy.delivery.signing_processes, policy.delivery.signing_threads) == (1, 0)
    assert (task["Cpu"], task["Memory"]) == ("2048", "4096")
    path = policy_variant(("signing_processes = 1", line))
    template = Template.from_stack(build(path, tmp_path / "out").service).to_json()
    _, task = only(template, "AWS::ECS::TaskDefinition")
    assert (task["Cpu"], task["Memory"]) == ("4096", "8192")  # 3 rounded up to a Fargate size


def test_a_drain_deadline_beyond_fargate_limits_fails_synth(
    policy_variant: Callable[..., Path], tmp_path: Path
) -> None:
    path = policy_variant(('drain_deadline = "100s"', 'drain_deadline = "101s"'))
    with pytest.raises(DeploymentError, match="the stop timeout would be 121s"):
        build(path, tmp_path / "out")


def test_rollouts_keep_capacity_and_roll_back(service: dict[str, Any]) -> None:
    _, props = only(service, "AWS::ECS::Service")
    deployment = props["DeploymentConfiguration"]
    assert deployment["MinimumHealthyPercent"] == 100
    assert deployment["MaximumPercent"] == 200
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert props["LaunchType"] == "FARGATE"


def test_tasks_run_in_three_azs_without_public_addresses(service: dict[str, Any]) -> None:
    _, props = only(service, "AWS::ECS::Service")
    network = props["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    azs = {service["Resources"][ref_target(s)]["Properties"]["AvailabilityZone"]
           for s in network["Subnets"]}
    assert len(azs) == 3
    _, target = only(service, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] >= 2
    assert props["AvailabilityZoneRebalancing"] == "ENABLED"


def test_container_runs_the_sender_with_the_deployed_policy(
    service: dict[str, Any], stateful: dict[str, Any],
) -> None:
    definition = container(service)
    assert definition["Command"][:2] == ["sender", "--config"]
    (_, parts) = definition["Command"][2]["Fn::Join"]
    assert parts[0] == "s3://" and parts[2] == "/policy/quiver.toml"
    assert output_source(stateful, parts[1]) == {"Ref": "PolicyBucket"}
    environment = {e["Name"]: e["Value"] for e in definition["Environment"]}
    assert environment[settings.ENV_POLICY_SOURCE] == definition["Command"][2]
    assert definition["ReadonlyRootFilesystem"] is True
    assert definition["LogConfiguration"]["LogDriver"] == "awslogs"
    (log_group,) = [
        r for r in resources(service, "AWS::Logs::LogGroup")
        if r == ref_target(definition["LogConfiguration"]["Options"]["awslogs-group"])
    ]
    assert service["Resources"][log_group]["Properties"]["RetentionInDays"] == 30


def test_every_deployment_setting_is_set(service: dict[str, Any], stateful: dict[str, Any]) -> None:
    names = {value for key, value in vars(settings).items() if key.startswith("ENV_")}
    # The inbound bucket is the intakes' (cdk/inbound_mail.py sets it on them).
    names.discard(settings.ENV_INBOUND_BUCKET)
    # Athena is for operators' `quiver trace`, not the task (its role may not query).
    names -= {settings.ENV_ATHENA_WORKGROUP, settings.ENV_ATHENA_DATABASE}
    # Deployed, the policy is an S3 object (ENV_POLICY_SOURCE); the SSM parameter's
    # name is only the fallback of older or local setups.
    names.discard(settings.ENV_POLICY_PARAMETER)
    # Tenant keys and replay records are the ingresses' (cdk/ingress_http.py); a
    # sender never reads them, and its role has no grant on them.
    names -= {settings.ENV_TENANT_KEYS_TABLE, settings.ENV_IDEMPOTENCY_TABLE}
    environment = {e["Name"]: e["Value"] for e in container(service)["Environment"]}
    assert names <= set(environment)
    resolved = {
        name: output_source(stateful, value) if "Fn::GetStackOutput" in value else value
        for name, value in environment.items() if isinstance(value, dict)
    }
    assert resolved[settings.ENV_OUTBOUND_QUEUE_URL] == {"Ref": "OutboundQueue"}
    assert resolved[settings.ENV_OUTBOUND_DLQ_URL] == {"Ref": "OutboundDeadLetterQueue"}
    assert resolved[settings.ENV_EVENTS_QUEUE_URL] == {"Ref": "EventsQueue"}
    assert resolved[settings.ENV_SPILL_BUCKET] == {"Ref": "SpillBucket"}
    assert resolved[settings.ENV_EVENTS_BUCKET] == {"Ref": "EventsBucket"}
    assert resolved[settings.ENV_SUPPRESSION_TABLE] == {"Ref": "SuppressionTable"}
    assert resolved[settings.ENV_SENDERS_TABLE] == {"Ref": "SendersTable"}
    assert resolved[settings.ENV_FINALS_TABLE] == {"Ref": "FinalsTable"}
    assert resolved[settings.ENV_CONTROLS_TABLE] == {"Ref": "ControlsTable"}


def test_sender_knows_the_outbound_queues_receive_limit(
        service: dict[str, Any], stateful: dict[str, Any]) -> None:
    """The sender records `failed` finals one receive before SQS moves a message to the
    DLQ; that needs the very maxReceiveCount the queue was given."""
    environment = {e["Name"]: e["Value"] for e in container(service)["Environment"]}
    redrive = stateful["Resources"]["OutboundQueue"]["Properties"]["RedrivePolicy"]
    assert environment[settings.ENV_OUTBOUND_MAX_RECEIVES] == str(redrive["maxReceiveCount"])
    assert settings.deployment_from_env({
        **{k: "x" for k in (settings.ENV_OUTBOUND_QUEUE_URL, settings.ENV_OUTBOUND_DLQ_URL,
                            settings.ENV_EVENTS_QUEUE_URL, settings.ENV_SPILL_BUCKET,
                            settings.ENV_EVENTS_BUCKET)},
        settings.ENV_OUTBOUND_MAX_RECEIVES: environment[settings.ENV_OUTBOUND_MAX_RECEIVES],
    }).outbound_max_receives == redrive["maxReceiveCount"]


def test_scales_on_sendable_mail_per_task_and_oldest_message(
    service: dict[str, Any], stateful: dict[str, Any], policy: Policy
) -> None:
    by_type = {
        r["Properties"]["PolicyType"]: (k, r["Properties"])
        for k, r in resources(service, "AWS::ApplicationAutoScaling::ScalingPolicy").items()
    }
    _, target_tracking = by_type["TargetTrackingScaling"]
    tracking = target_tracking["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == policy.intake.max_inflight_messages
    metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
    # Mail that more tasks would send sooner: what the senders hold that no limit holds
    # back, plus what is due in the queue (delayed retries are not visible).
    assert metrics["per_task"]["Expression"] == "sendable + visible / tasks"
    assert metrics["per_task"]["ReturnData"] is True
    sendable = metrics["sendable"]["MetricStat"]
    assert sendable["Metric"] == {"Namespace": "Quiver", "MetricName": "sendable_now"}
    assert sendable["Stat"] == "Average"  # the mean per task: every task writes each flush
    visible = metrics["visible"]["MetricStat"]["Metric"]
    assert visible["MetricName"] == "ApproximateNumberOfMessagesVisible"
    (queue,) = visible["Dimensions"]
    assert output_source(stateful, queue["Value"]) == {
        "Fn::GetAtt": ["OutboundQueue", "QueueName"]
    }
    assert metrics["tasks"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    step_id, step = by_type["StepScaling"]
    adjustments = step["StepScalingPolicyConfiguration"]["StepAdjustments"]
    assert [a["ScalingAdjustment"] for a in adjustments] == [2, 4]
    (trigger,) = [
        a["Properties"] for a in resources(service, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("AlarmActions") == [{"Ref": step_id}]
    ]
    assert trigger["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert trigger["Threshold"] == 300


def test_sender_egress_is_proxies_and_aws_endpoints_only(
    service: dict[str, Any], policy: Policy
) -> None:
    (group,) = [k for k, r in resources(service, "AWS::EC2::SecurityGroup").items()
                if r["Properties"]["GroupDescription"].startswith("Quiver senders")]
    assert "SecurityGroupEgress" not in service["Resources"][group]["Properties"]
    egress = [r["Properties"] for r in resources(service, "AWS::EC2::SecurityGroupEgress").values()
              if ref_target(r["Properties"]["GroupId"]) == group]
    ports = sorted(r["FromPort"] for r in egress)
    assert ports == sorted([443, 443, 443, policy.proxy.frontend_port, policy.proxy.health_port])
    for rule in egress:
        assert "CidrIp" not in rule and "CidrIpv6" not in rule


def test_image_is_built_from_the_repo_dockerfile_for_fargate(synth: Any) -> None:
    manifest = json.loads((synth.outdir / "QuiverService.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "Dockerfile"
    assert source["platform"] == "linux/amd64"
    context = synth.outdir / source["directory"]
    staged = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    # The .dockerignore allow-list: the build context is the package, nothing else.
    assert {"Dockerfile", "pyproject.toml", "README.md", "quiver/policy/load.py",
            "quiver/routing/proxy_probe.py"} <= staged
    allowed = {"Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "quiver",
               "image/requirements.lock"}
    assert all(p.split("/")[0] in allowed or p in allowed for p in staged), sorted(staged)
    # The dev stack (local servers, moto, the demo) is not in the sender image.
    assert not [p for p in staged if p.startswith("quiver/devstack/")]
    assert not [p for p in staged if "__pycache__" in p]


def test_the_container_health_check_calls_healthz_on_loopback(service: dict[str, Any]) -> None:
    from cdk.sender_service import HEALTH_CHECK

    definition = container(service)
    check = definition["HealthCheck"]
    assert check["Command"] == ["CMD-SHELL", HEALTH_CHECK]
    assert "http://127.0.0.1:8080/healthz" in HEALTH_CHECK and HEALTH_CHECK.startswith("python -c")
    assert (check["Interval"], check["Timeout"], check["Retries"], check["StartPeriod"]) == \
        (30, 5, 3, 60)
    # The sender serves what the check calls: on the port, inside the task.
    command = definition["Command"]
    assert command[3:] == ["--status-port", "8080", "--status-bind", "0.0.0.0"]
    # Not exposed: no port mapping, and no ingress rule on the sender's security group.
    assert not definition.get("PortMappings")
    groups = [props for props in resources(service, "AWS::EC2::SecurityGroup").values()
              if "Quiver senders" in props["Properties"].get("GroupDescription", "")]
    assert groups and all(not g["Properties"].get("SecurityGroupIngress") for g in groups)
    ingress = resources(service, "AWS::EC2::SecurityGroupIngress")
    sender_group = next(logical for logical, props in
                        resources(service, "AWS::EC2::SecurityGroup").items()
                        if "Quiver senders" in props["Properties"].get("GroupDescription", ""))
    assert not [i for i in ingress.values()
                if ref_target(i["Properties"].get("GroupId")) == sender_group]


def test_the_health_check_command_runs_against_a_status_endpoint(tmp_path: Path) -> None:
    """The check's own shell command, against a live endpoint: 0 when healthy, not 0
    when the endpoint answers 503 (its loop never ticked) or nothing listens."""
    import subprocess
    import sys

    from cdk.sender_service import HEALTH_CHECK
    from quiver.status.liveness import LoopBeat
    from quiver.status.server import StatusServer

    def run_check(port: int) -> int:
        # The image's `python` is the interpreter running this test.
        command = HEALTH_CHECK.replace(":8080/", f":{port}/").replace(
            "python -c", f"{sys.executable} -c", 1)
        return subprocess.run(["sh", "-c", command], capture_output=True, timeout=60,
                              check=False).returncode

    beat = LoopBeat()
    server = StatusServer(host="127.0.0.1", port=0, beat=beat, snapshot=dict)
    import asyncio
    loop = asyncio.new_event_loop()
    server.start(loop)  # served, but its loop never runs: no tick yet, 503
    try:
        port = server.address[1]
        assert run_check(port) != 0
        beat.tick()
        assert run_check(port) == 0
    finally:
        server.close()
        loop.close()
    assert run_check(port) != 0  # nothing listens
