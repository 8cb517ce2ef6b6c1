"""Least privilege: no wildcard actions, data access only to the exact resources."""

from __future__ import annotations

from typing import Any

import pytest
from infra_helpers import (
    as_list,
    output_source,
    ref_target,
    render,
    resource_policies,
    resources,
    statements,
    trust_statements,
)

pytestmark = pytest.mark.infra

DATA_SERVICES = ("sqs", "s3", "dynamodb", "secretsmanager", "ssm", "kms", "sns")
# Actions that IAM cannot scope to a resource: "*" is the only legal Resource.
RESOURCELESS = {"ecr:GetAuthorizationToken", "ec2:DescribeManagedPrefixLists"}
ALLOWED_MANAGED_POLICIES = {"AmazonSSMManagedInstanceCore", "AWSLambdaBasicExecutionRole"}


def role_statements(service: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    found = []
    for policy in resources(service, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            found.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def role_of(service: dict[str, Any], task_attr: str) -> str:
    (task,) = resources(service, "AWS::ECS::TaskDefinition").values()
    return ref_target(task["Properties"][task_attr])


def wildcard(action: str) -> bool:
    return action == "*" or action.endswith(":*")


def allow_or_deny(statement: dict[str, Any]) -> str:
    effect = statement["Effect"]
    assert effect in ("Allow", "Deny"), statement
    return str(effect)


@pytest.mark.parametrize("stack", ["stateful", "service"])
def test_no_wildcard_actions(stack: str, request: pytest.FixtureRequest) -> None:
    """An Allow names its actions; only a Deny may be broad (`sqs:*` over plain HTTP)."""
    template = request.getfixturevalue(stack)
    checked = statements(template)
    assert checked, f"no policy statement in the {stack} stack: nothing would be checked"
    for logical_id, statement in checked:
        if allow_or_deny(statement) == "Deny":
            continue
        # NotAction, NotResource and NotPrincipal grant everything they do not name.
        assert not {"NotAction", "NotResource", "NotPrincipal"} & statement.keys(), logical_id
        for action in as_list(statement["Action"]):
            assert not wildcard(action), (logical_id, action)
    print(f"{stack}: {len(checked)} statements, "
          f"{sum(s['Effect'] == 'Deny' for _, s in checked)} of them Deny")


@pytest.mark.parametrize("stack", ["stateful", "service"])
def test_star_resources_only_for_actions_without_resource_scoping(
    stack: str, request: pytest.FixtureRequest
) -> None:
    template = request.getfixturevalue(stack)
    checked = statements(template)
    assert checked, f"no policy statement in the {stack} stack: nothing would be checked"
    for logical_id, statement in checked:
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= RESOURCELESS, (logical_id, statement)
        for action in as_list(statement["Action"]):
            if action.split(":")[0] in DATA_SERVICES:
                assert "*" not in as_list(statement["Resource"]), (logical_id, action)


# Resource types whose Ref is their ARN (a queue's Ref is its URL, a bucket's its name).
REF_IS_ARN = {"AWS::SNS::TopicPolicy"}


def own_resource(rendered: str, governs: tuple[str, ...], *, ref_is_arn: bool = False) -> bool:
    """An ARN of a governed resource, or of what is inside it (a bucket's objects)."""
    return any(rendered == f"${{{target}.Arn}}" or rendered.startswith(f"${{{target}.Arn}}/")
               or (ref_is_arn and rendered == f"${{{target}}}")
               for target in governs)


def anyone(principal: Any) -> bool:
    return principal == "*" or (isinstance(principal, dict) and "*" in as_list(
        principal.get("AWS", [])))


def test_resource_policies_speak_only_of_their_own_resource_and_allow_no_one(
        stateful: dict[str, Any], service: dict[str, Any]) -> None:
    """Bucket and queue policies (and any other resource policy): every statement is about
    the resource the policy is attached to, and '*' as principal only ever in a Deny."""
    policies = resource_policies(stateful) + resource_policies(service)
    buckets = set(resources(stateful, "AWS::S3::Bucket")) | set(
        resources(service, "AWS::S3::Bucket"))
    queues = set(resources(stateful, "AWS::SQS::Queue"))
    # Every bucket and queue has its policy (the TLS-only deny), so each is checked here.
    assert {g for p in policies if p.type == "AWS::S3::BucketPolicy" for g in p.governs} == buckets
    assert {g for p in policies if p.type == "AWS::SQS::QueuePolicy" for g in p.governs} == queues
    for policy in policies:
        assert policy.statements, policy.logical_id
        for statement in policy.statements:
            effect = allow_or_deny(statement)
            for resource in as_list(statement["Resource"]):
                assert own_resource(str(render(resource)), policy.governs,
                                    ref_is_arn=policy.type in REF_IS_ARN), (
                    policy.logical_id, resource)
            if effect == "Allow":
                assert not anyone(statement.get("Principal")), (policy.logical_id, statement)
                assert "NotPrincipal" not in statement, policy.logical_id
    print(f"{len(policies)} resource policies, "
          f"{sum(len(p.statements) for p in policies)} statements")


def test_roles_trust_only_the_aws_service_that_runs_them(service: dict[str, Any]) -> None:
    trusted = trust_statements(service)
    roles = set(resources(service, "AWS::IAM::Role"))
    assert {logical_id for logical_id, _ in trusted} == roles
    for logical_id, statement in trusted:
        assert statement["Effect"] == "Allow", logical_id
        assert as_list(statement["Action"]) == ["sts:AssumeRole"], logical_id
        principal = statement["Principal"]
        assert set(principal) == {"Service"}, (logical_id, principal)
        assert all(str(s).endswith(".amazonaws.com") for s in as_list(principal["Service"]))


def test_only_expected_managed_policies(service: dict[str, Any]) -> None:
    names = [(logical_id, str(render(arn)).rsplit("/", 1)[-1])
             for logical_id, role in resources(service, "AWS::IAM::Role").items()
             for arn in role["Properties"].get("ManagedPolicyArns", [])]
    assert names, "no managed policy attached anywhere: nothing would be checked"
    for logical_id, name in names:
        assert name in ALLOWED_MANAGED_POLICIES, (logical_id, name)


def test_sender_task_role_is_exactly_its_queues_bucket_tables_policy_and_keys(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    role = role_of(service, "TaskRoleArn")
    granted = {}
    for statement in role_statements(service, role):
        assert statement["Effect"] == "Allow"
        targets = []
        for resource in as_list(statement["Resource"]):
            value = render(resource)
            if isinstance(resource, dict) and "Fn::GetStackOutput" in resource:
                value = output_source(stateful, resource)
            elif isinstance(resource, dict) and "Fn::Join" in resource:
                parts = resource["Fn::Join"][1]
                value = "".join(
                    str(output_source(stateful, p)) if isinstance(p, dict)
                    and "Fn::GetStackOutput" in p else str(render(p))
                    for p in parts
                )
            targets.append(str(value))
        granted[statement["Sid"]] = (sorted(as_list(statement["Action"])), sorted(targets))
    assert granted == {
        "ConsumeAndRequeueOutbound": (
            ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage",
             "sqs:SendMessage"],
            ["{'Fn::GetAtt': ['OutboundQueue', 'Arn']}"],
        ),
        "DeadLetterBadInputAndSendEvents": (
            ["sqs:SendMessage"],
            sorted(["{'Fn::GetAtt': ['OutboundDeadLetterQueue', 'Arn']}",
                    "{'Fn::GetAtt': ['EventsQueue', 'Arn']}"]),
        ),
        "SpilledBodies": (
            ["s3:GetObject", "s3:PutObject"], ["{'Fn::GetAtt': ['SpillBucket', 'Arn']}/*"],
        ),
        "SuppressionList": (
            ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
            ["{'Fn::GetAtt': ['SuppressionTable', 'Arn']}"],
        ),
        "SenderHeartbeats": (
            ["dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Query"],
            ["{'Fn::GetAtt': ['SendersTable', 'Arn']}"],
        ),
        "FinalEventsOfRedeliveredMessages": (
            ["dynamodb:Query"], ["{'Fn::GetAtt': ['FinalsTable', 'Arn']}"],
        ),
        # `quiver ctl` writes the operator's controls with an operator's credentials.
        "ReadOperatorControls": (
            ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"],
            ["{'Fn::GetAtt': ['ControlsTable', 'Arn']}"],
        ),
        # The adaptive engine's suspensions and shared rates (partitions: see below).
        "WriteAdaptiveControls": (
            ["dynamodb:PutItem", "dynamodb:UpdateItem"],
            ["{'Fn::GetAtt': ['ControlsTable', 'Arn']}"],
        ),
        # The policy object's key only: no listing, no other object, no version.
        "ReadPolicy": (
            ["s3:GetObject"], ["{'Fn::GetAtt': ['PolicyBucket', 'Arn']}/policy/quiver.toml"],
        ),
        "ReadDkimKeys": (
            ["secretsmanager:GetSecretValue"],
            ["arn:aws:secretsmanager:us-east-1:${AWS::AccountId}:secret:quiver/dkim/*"],
        ),
    }


def test_sender_execution_role_only_pulls_its_image_and_writes_its_logs(
    service: dict[str, Any]
) -> None:
    role = role_of(service, "ExecutionRoleArn")
    actions = sorted(a for s in role_statements(service, role) for a in as_list(s["Action"]))
    assert actions == sorted([
        "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
        "ecr:GetAuthorizationToken", "logs:CreateLogStream", "logs:PutLogEvents",
    ])


def test_export_function_writes_only_event_objects_and_final_event_claims(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    functions = {
        k: r for k, r in resources(service, "AWS::Lambda::Function").items()
        if r["Properties"].get("Handler", "").startswith("functions.event_export")
    }
    ((_, function),) = functions.items()
    role = ref_target(function["Properties"]["Role"])
    s3 = [s for s in role_statements(service, role)
          if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    (statement,) = s3
    assert statement["Action"] == "s3:PutObject"
    bucket, suffix = statement["Resource"]["Fn::Join"][1]
    assert output_source(stateful, bucket) == {"Fn::GetAtt": ["EventsBucket", "Arn"]}
    assert suffix == "/events/*"
    dynamodb = [s for s in role_statements(service, role)
                if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
    (claims,) = dynamodb
    # Batched reads and puts of claims only: no Query, Scan, Update or Delete.
    assert sorted(as_list(claims["Action"])) == ["dynamodb:BatchGetItem",
                                                  "dynamodb:BatchWriteItem"]
    (table,) = as_list(claims["Resource"])
    assert output_source(stateful, table) == {"Fn::GetAtt": ["FinalsTable", "Arn"]}
    others = {a for s in role_statements(service, role) for a in as_list(s["Action"])} - {
        "s3:PutObject", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"}
    # The SQS event source's own permissions, on the events queue only.
    assert others == {"sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                      "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"}


def test_sender_writes_the_controls_table_only_in_its_partitions(
    service: dict[str, Any]
) -> None:
    """No delete, and puts only under the leading keys the adaptive engine owns: a
    sender cannot lift an operator's stop, nor write another partition."""
    role = role_of(service, "TaskRoleArn")
    (statement,) = [s for s in role_statements(service, role)
                    if s["Sid"] == "WriteAdaptiveControls"]
    assert statement["Condition"] == {"ForAllValues:StringEquals": {
        "dynamodb:LeadingKeys": ["adaptive-rate", "control"]}}
