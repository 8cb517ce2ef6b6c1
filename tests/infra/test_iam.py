"""Least privilege: no wildcard actions, data access only to the exact resources."""

from __future__ import annotations

from typing import Any

import pytest
from infra_helpers import as_list, output_source, ref_target, render, resources, statements

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


@pytest.mark.parametrize("stack", ["stateful", "service"])
def test_no_wildcard_actions(stack: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(stack)
    for logical_id, statement in statements(template):
        for action in as_list(statement["Action"]):
            assert action != "*", logical_id
            assert not action.endswith(":*"), (logical_id, action)


@pytest.mark.parametrize("stack", ["stateful", "service"])
def test_star_resources_only_for_actions_without_resource_scoping(
    stack: str, request: pytest.FixtureRequest
) -> None:
    template = request.getfixturevalue(stack)
    for logical_id, statement in statements(template):
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= RESOURCELESS, (logical_id, statement)
        for action in as_list(statement["Action"]):
            if action.split(":")[0] in DATA_SERVICES:
                assert "*" not in as_list(statement["Resource"]), (logical_id, action)


def test_only_expected_managed_policies(service: dict[str, Any]) -> None:
    for logical_id, role in resources(service, "AWS::IAM::Role").items():
        for arn in role["Properties"].get("ManagedPolicyArns", []):
            name = str(render(arn)).rsplit("/", 1)[-1]
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
    (parameter,) = resources(service, "AWS::SSM::Parameter")
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
            ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query",
             "dynamodb:UpdateItem"],
            ["{'Fn::GetAtt': ['SuppressionTable', 'Arn']}"],
        ),
        "SenderHeartbeats": (
            ["dynamodb:DeleteItem", "dynamodb:PutItem", "dynamodb:Query"],
            ["{'Fn::GetAtt': ['SendersTable', 'Arn']}"],
        ),
        "FinalEventsOfRedeliveredMessages": (
            ["dynamodb:Query"], ["{'Fn::GetAtt': ['FinalsTable', 'Arn']}"],
        ),
        "ReadPolicy": (
            ["ssm:GetParameter"],
            [f"arn:aws:ssm:us-east-1:${{AWS::AccountId}}:parameter${{{parameter}}}"],
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
