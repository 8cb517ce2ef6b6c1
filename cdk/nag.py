"""Acknowledging cdk-nag (AwsSolutions pack) findings, each with its reason.

cdk-nag reads CDK's own acknowledgments (`Validations.of(construct).acknowledge`):
one acknowledgment matches one finding id exactly and covers the construct and
everything under it. The constructs this repo defines acknowledge their findings
where the resource is made (cdk/buckets.py, cdk/tables.py, cdk/event_export.py, ...);
the functions below give the ids that are awkward to spell, and acknowledge what
aws-cdk-lib generates and what the network, sender and proxy constructs carry.
tests/infra/test_nag.py runs the pack over the whole app and fails on any finding
that is not acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from aws_cdk import Acknowledgment, CfnElement, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import IConstruct

PACK = "AwsSolutions"
LAMBDA_BASIC_EXECUTION = (
    "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
    "AWSLambdaBasicExecutionRole]"
)
LAMBDA_LOGGING_REASON = (
    "AWSLambdaBasicExecutionRole grants only CreateLogGroup, CreateLogStream and "
    "PutLogEvents, which every function needs to log; the function's own grants are "
    "separate statements scoped to its resources."
)
# The singleton Lambdas aws-cdk-lib adds to a stack (fixed construct ids): S3
# notifications of a bucket, and AwsCustomResource's handler.
GENERATED_HANDLERS = ("BucketNotificationsHandler", "AWS679f53fac002430cb0da5b7982bd2287")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge the finding `rule` ("S1", "IAM5[Resource::*]") on `scope` and below."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"{PACK}-{rule}", reason=reason))


def acknowledge_lambda_logging(scope: IConstruct) -> None:
    acknowledge(scope, LAMBDA_BASIC_EXECUTION, LAMBDA_LOGGING_REASON)


def acknowledge_generated_handlers(stack: Stack) -> None:
    """The Lambda logging policy on the handlers aws-cdk-lib adds to `stack`."""
    for child in stack.node.children:
        if child.node.id.startswith(GENERATED_HANDLERS):
            acknowledge(child, LAMBDA_BASIC_EXECUTION,
                        "A handler aws-cdk-lib generates (bucket notifications, SDK calls "
                        "at deploy time); " + LAMBDA_LOGGING_REASON)


def acknowledge_policy_upload(stack: Stack, *, policy_bucket: s3.IBucket) -> None:
    """The handler aws-cdk-lib adds for BucketDeployment (cdk/policy_object.py): it
    copies the policy object from the CDK asset bucket at deploy time."""
    why = ("BucketDeployment's deploy-time handler (aws-cdk-lib's) copies the policy "
           "object from the CDK asset bucket into the policy bucket; ")
    for child in stack.node.children:
        if not child.node.id.startswith("Custom::CDKBucketDeployment"):
            continue
        acknowledge(child, LAMBDA_BASIC_EXECUTION, why + LAMBDA_LOGGING_REASON)
        acknowledge(child, "L1", why + "its runtime is aws-cdk-lib's choice and moves "
                    "with aws-cdk-lib upgrades, not ours.")
        for grant in ("Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*",
                      "Action::s3:DeleteObject*", "Action::s3:Abort*",
                      f"Resource::arn:aws:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-"
                      f"{stack.region}/*"):
            acknowledge(child, f"IAM5[{grant}]", why + "aws-cdk-lib grants it these action "
                        "groups on the asset bucket and the destination bucket only.")
        acknowledge(child, object_wildcard(policy_bucket, "*"),
                    why + "it writes the one policy key (prune off), in that bucket only.")


def object_wildcard(bucket: s3.IBucket, pattern: str) -> str:
    """The IAM5 finding for `bucket.arn_for_objects(pattern)` granted in another stack.

    The consumer sees the bucket's ARN as Fn::GetStackOutput of the output that
    aws-cdk-lib adds to the producer (scope "Publish", id "Output" + the reference);
    a wrong id here leaves the finding unacknowledged, which tests/infra/test_nag.py
    reports.
    """
    producer = Stack.of(bucket)
    reference = json.dumps(producer.resolve(bucket.bucket_arn), separators=(",", ":"))
    output = _unique_id(["Publish", f"Output{reference}"])
    arn = json.dumps({"Fn::GetStackOutput": {
        "StackName": producer.stack_name, "Region": producer.region, "OutputName": output,
    }}, separators=(",", ":"))
    return f"IAM5[Resource::{arn}/{pattern}]"


def _unique_id(components: list[str]) -> str:
    """aws-cdk-lib's logical id of a construct path: its letters and digits plus a hash."""
    human = "".join(_NON_ALNUM.sub("", c) for c in components)
    digest = hashlib.md5("/".join(components).encode(), usedforsecurity=False).hexdigest()
    return human + digest[:8].upper()


def secret_wildcard(scope: IConstruct, prefix: str) -> str:
    """The IAM5 finding for GetSecretValue on every secret under `prefix` in scope's stack."""
    region = Stack.of(scope).region
    return f"IAM5[Resource::arn:aws:secretsmanager:{region}:<AWS::AccountId>:secret:{prefix}*]"


def acknowledge_service_constructs(
    *, network: IConstruct, senders: IConstruct, proxies: IConstruct,
    proxy_instances: Mapping[str, ec2.CfnInstance], spill_bucket: s3.IBucket,
    dkim_secret_prefix: str, return_path_secret_prefix: str,
) -> None:
    """The findings on the network, the senders and the proxy nodes, with reasons."""
    acknowledge(network.node.find_child("EndpointSecurityGroup"), "EC23",
                "The rule cannot read the VPC CIDR token; the group admits only the VPC's "
                "CIDR on 443 (the interface endpoints), never 0.0.0.0/0.")
    for lookup in ("S3PrefixList", "DynamoDbPrefixList"):
        acknowledge(network.node.find_child(lookup), "IAM5[Resource::*]",
                    "ec2:DescribeManagedPrefixLists has no resource-level permissions; the "
                    "deploy-time lookup may call nothing else.")
    task = senders.node.find_child("Task")
    acknowledge_execution_role(task)
    acknowledge(task, object_wildcard(spill_bucket, "*"),
                "Spilled bodies are objects with generated keys; the senders read and write "
                "them in the spill bucket only, which holds nothing else.")
    for prefix in (dkim_secret_prefix, return_path_secret_prefix):
        acknowledge(task, secret_wildcard(task, prefix),
                    "Secret ARNs end in a random suffix, so the grant is a name prefix: "
                    f"only secrets under {prefix}.")
    acknowledge(task, "ECS2",
                "The environment holds resource names, URLs and tuning values; secrets come "
                "from Secrets Manager at run time, never from the task definition.")
    acknowledge(proxies, "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                "AmazonSSMManagedInstanceCore]",
                "Session Manager is the only way onto a proxy node (no SSH, no key pairs); "
                "this is the policy AWS maintains for its agent.")
    log_group = proxies.node.find_child("HaproxyLogs").node.default_child
    assert isinstance(log_group, CfnElement)
    acknowledge(proxies.node.find_child("Role"),
                f"IAM5[Resource::<{Stack.of(proxies).get_logical_id(log_group)}.Arn>:*]",
                "The CloudWatch agent writes log streams, whose names it makes per instance, "
                "into the one HAProxy log group; `:*` names that group's streams and no other.")
    for instance in proxy_instances.values():
        if instance.disable_api_termination is None:
            acknowledge(instance, "EC29",
                        "Real, and left to the proxy tier's own change (termination "
                        "protection on each node); this lapses once DisableApiTermination "
                        "is set. Each node holds fixed addresses, so it cannot be in an ASG.")


def acknowledge_execution_role(task: IConstruct) -> None:
    """A Fargate task definition's execution role (ECR pulls, log writes)."""
    acknowledge(task, "IAM5[Resource::*]",
                "The execution role's ecr:GetAuthorizationToken has no resource-level "
                "permissions; image pulls and log writes are scoped to their resources.")


def acknowledge_smtp_ingress(ingress: IConstruct, *, spill_bucket: s3.IBucket) -> None:
    """The findings on the SMTP ingress (cdk/smtp_ingress.py), with reasons."""
    acknowledge(ingress.node.find_child("SecurityGroup"), "EC23",
                "The rule cannot read the VPC CIDR token; the group admits only the VPC's "
                "CIDR (the load balancer's nodes) on the SMTP ports, never 0.0.0.0/0.")
    task = ingress.node.find_child("Task")
    acknowledge_execution_role(task)
    acknowledge(task, object_wildcard(spill_bucket, "spill/*"),
                "The queue client writes spilled bodies under generated keys below spill/ "
                "in the spill bucket; put only, never read or delete.")
    acknowledge(task, "ECS2",
                "The environment holds the queue URL, bucket name and region; the TLS key "
                "comes from Secrets Manager at start, never from the task definition.")
    acknowledge(ingress.node.find_child("LoadBalancer"), "ELB2",
                "The listeners are plain TCP (STARTTLS is the task's own): a Network Load "
                "Balancer writes access logs only for TLS listeners; the tasks log each "
                "session with the client's address from the PROXY header.")
