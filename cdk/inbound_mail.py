"""Inbound mail: SES receives bounces, complaints and mailed unsubscribe requests,
stores them in the inbound bucket, and S3 notifies an intake queue per prefix, which
feeds that prefix's Lambda.

    MX bounces.example.com → SES receipt rule → s3://<inbound>/bounce/<id>
        → S3 event → SQS <prefix>-bounce-intake (DLQ) → bounce intake Lambda
    unsubscribe@bounces.example.com (a mailto) → its own rule → the same, bounce/
    fbl@fbl.example.com    → SES receipt rule → s3://<inbound>/fbl/<id>
        → S3 event → SQS <prefix>-fbl-intake (DLQ)    → FBL intake Lambda
    Lambdas → events queue (async_bounce, complaint, unsubscribed) and the
        suppression table

A mailto request shares the bounce prefix and Lambda: it needs exactly what a
bounce needs (the key ring, a conditional PutItem on the suppression table, the
events queue), so a prefix, queue and function of its own would add resources and
grant nothing less. The bounce intake tells the two apart by the envelope recipient
SES records (quiver.intake.by_recipient).

Two constructs, stateful apart from stateless: `InboundQueues` (in QuiverStateful:
the intake queues and DLQs, the bucket's notifications, and the bucket policy that
lets SES write, scoped to this account's rule set by aws:SourceAccount and
aws:SourceArn) and `InboundMail` (in QuiverService: the receipt rule set, a rule per
FBL address, per unsubscribe mailto address and per bounce domain, and the two
Lambdas). The queue between S3 and
Lambda holds a burst, and a Lambda that fails, for the queue's retention; a record
that keeps failing moves to the DLQ after INTAKE_MAX_RECEIVES.

Activation: CloudFormation can create a receipt rule set but not make it the active
one (there is one active set per account and region). A custom resource calls
SetActiveReceiptRuleSet on create, and deactivates on delete so the set can be
deleted; it replaces whatever set was active in the region (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jsii
from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_ses as ses
from aws_cdk import aws_ses_actions as ses_actions
from aws_cdk import aws_sqs as sqs
from aws_cdk import custom_resources as cr
from aws_cdk.aws_lambda_event_sources import SqsEventSource
from aws_cdk.interfaces.aws_ses import IReceiptRuleRef
from constructs import Construct

from cdk.event_export import (
    METRICS_NAMESPACE,
    POWERTOOLS_LAYER_VERSION,
    powertools_layer,
    quiver_function,
)
from cdk.logical_ids import logical_id_part, pin_logical_id
from cdk.nag import (
    acknowledge,
    acknowledge_lambda_logging,
    object_wildcard,
    secret_wildcard,
)
from cdk.policy_object import PolicyObject
from cdk.queues import DLQ_RETENTION
from quiver.intake.receipt import ReceiptRule, receipt_rules
from quiver.names import INBOUND_BOUNCE_PREFIX, INBOUND_FBL_PREFIX, ResourceNames
from quiver.policy import Policy
from quiver.settings import (
    ENV_EVENTS_QUEUE_URL,
    ENV_FINALS_TABLE,
    ENV_INBOUND_BUCKET,
    ENV_POLICY_SOURCE,
    ENV_SUPPRESSION_TABLE,
)

INTAKE_TIMEOUT = Duration.seconds(60)
# Ten objects per invocation: each is a few DynamoDB and SQS calls (and DNS for DKIM).
INTAKE_BATCH_SIZE = 10
# An object that fails this often (a store outage past its retries, a notification
# that is not S3's) is dead-lettered, kept 14 days, and can be redriven.
INTAKE_MAX_RECEIVES = 5
INTAKE_RETENTION = Duration.days(4)
# AWS's rule for a queue feeding Lambda: at least 6x the function timeout.
INTAKE_VISIBILITY = Duration.seconds(6 * int(INTAKE_TIMEOUT.to_seconds()))

# What the intakes need beyond the Lambda runtime and the Powertools layer, all pure
# Python: dnspython for the policy they load (its routes are dnspython types), and
# for the FBL intake dkimpy too (the reporter's DKIM signature, keys over DNS).
BOUNCE_VENDORED = ("dns",)
FBL_VENDORED = ("dkim", "dns")

LOGICAL_IDS = {
    "bounce_queue": "BounceIntakeQueue",
    "bounce_dlq": "BounceIntakeDeadLetterQueue",
    "fbl_queue": "FblIntakeQueue",
    "fbl_dlq": "FblIntakeDeadLetterQueue",
}


def receipt_rule_set_arn(names: ResourceNames) -> str:
    """Every rule of this deployment's rule set: the SES source the bucket accepts."""
    return (f"arn:{Aws.PARTITION}:ses:{Aws.REGION}:{Aws.ACCOUNT_ID}:receipt-rule-set/"
            f"{names.receipt_rule_set}:receipt-rule/*")


class InboundQueues(Construct):
    """The intake queues and what fills them: S3 notifications per prefix, and the
    bucket policy that lets this deployment's SES rules write under the prefixes."""

    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames,
                 inbound_bucket: s3.Bucket) -> None:
        super().__init__(scope, construct_id)
        self.bounce_dlq = self._queue("BounceIntakeDeadLetterQueue", names.bounce_dlq,
                                      retention=DLQ_RETENTION)
        self.bounce = self._queue("BounceIntakeQueue", names.bounce_queue,
                                  retention=INTAKE_RETENTION, dlq=self.bounce_dlq)
        self.fbl_dlq = self._queue("FblIntakeDeadLetterQueue", names.fbl_dlq,
                                   retention=DLQ_RETENTION)
        self.fbl = self._queue("FblIntakeQueue", names.fbl_queue,
                               retention=INTAKE_RETENTION, dlq=self.fbl_dlq)
        for attr, logical_id in LOGICAL_IDS.items():
            pin_logical_id(getattr(self, attr.removesuffix("_queue")), logical_id)
        for prefix, queue in ((INBOUND_BOUNCE_PREFIX, self.bounce),
                              (INBOUND_FBL_PREFIX, self.fbl)):
            inbound_bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED, s3n.SqsDestination(queue),
                s3.NotificationKeyFilter(prefix=prefix))
        # SES writes as itself, for this account's rule set only: a rule of another
        # account (or another rule set here) pointed at the bucket is refused.
        inbound_bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="SesWritesInboundMail",
            principals=[iam.ServicePrincipal("ses.amazonaws.com")],
            actions=["s3:PutObject"],
            resources=[inbound_bucket.arn_for_objects(f"{INBOUND_BOUNCE_PREFIX}*"),
                       inbound_bucket.arn_for_objects(f"{INBOUND_FBL_PREFIX}*")],
            conditions={
                "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                "ArnLike": {"aws:SourceArn": receipt_rule_set_arn(names)},
            },
        ))

    def _queue(self, construct_id: str, name: str, *, retention: Duration,
               dlq: sqs.Queue | None = None) -> sqs.Queue:
        return sqs.Queue(
            self, construct_id,
            queue_name=name,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=retention,
            visibility_timeout=INTAKE_VISIBILITY if dlq is not None else None,
            receive_message_wait_time=Duration.seconds(20),
            dead_letter_queue=sqs.DeadLetterQueue(queue=dlq, max_receive_count=INTAKE_MAX_RECEIVES)
            if dlq is not None else None,
            removal_policy=RemovalPolicy.RETAIN,
        )


@dataclass(frozen=True)
class _Shared:
    """What both intake functions use."""

    inbound_bucket: s3.IBucket
    events_queue: sqs.IQueue
    suppression_table: dynamodb.ITable
    finals_table: dynamodb.ITable
    policy_object: PolicyObject
    return_path_secret_prefix: str
    log_retention: logs.RetentionDays


class InboundMail(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        policy: Policy,
        names: ResourceNames,
        bounce_code_dir: Path,
        fbl_code_dir: Path,
        queues: InboundQueues,
        inbound_bucket: s3.IBucket,
        events_queue: sqs.IQueue,
        suppression_table: dynamodb.ITable,
        finals_table: dynamodb.ITable,
        policy_object: PolicyObject,
        return_path_secret_prefix: str,
        powertools_layer_version: int = POWERTOOLS_LAYER_VERSION,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        self._layer = powertools_layer(self, powertools_layer_version)
        shared = _Shared(
            inbound_bucket=inbound_bucket, events_queue=events_queue,
            suppression_table=suppression_table, finals_table=finals_table,
            policy_object=policy_object,
            return_path_secret_prefix=return_path_secret_prefix, log_retention=log_retention,
        )
        self.bounce_function = self._intake(
            "Bounce", function="bounce_intake", code_dir=bounce_code_dir, queue=queues.bounce,
            prefix=INBOUND_BOUNCE_PREFIX, shared=shared)
        self.fbl_function = self._intake(
            "Fbl", function="fbl_intake", code_dir=fbl_code_dir, queue=queues.fbl,
            prefix=INBOUND_FBL_PREFIX, shared=shared)
        self.rule_set: ses.ReceiptRuleSet | None = None
        rules = receipt_rules(policy)
        if rules:
            self.rule_set = self._rules(names, inbound_bucket, rules)

    def _rules(self, names: ResourceNames, bucket: s3.IBucket,
               rules: tuple[ReceiptRule, ...]) -> ses.ReceiptRuleSet:
        rule_set = ses.ReceiptRuleSet(self, "RuleSet", receipt_rule_set_name=names.receipt_rule_set)
        after: ses.IReceiptRule | None = None
        # FBL addresses first, then mailto addresses, each stopping the set: an FBL or
        # mailto address on a bounce domain must not also be stored by that domain's
        # rule (a second object for the same mail). The policy refuses a mailto that
        # is an FBL address, or that is on no bounce or FBL domain (whose MX is SES's).
        for rule in rules:
            actions: list[ses.IReceiptRuleAction] = [
                _StoreRaw(bucket=bucket, object_key_prefix=rule.prefix)]
            if rule.stop:
                actions.append(ses_actions.Stop())
            after = rule_set.add_rule(
                f"{rule.kind}{logical_id_part(rule.recipient)}", recipients=[rule.recipient],
                actions=actions, after=after,
                enabled=True, scan_enabled=True, tls_policy=ses.TlsPolicy.OPTIONAL,
            )
        self._activate(rule_set, names)
        return rule_set

    def _activate(self, rule_set: ses.ReceiptRuleSet, names: ResourceNames) -> None:
        activate = cr.AwsSdkCall(
            service="SES", action="setActiveReceiptRuleSet",
            parameters={"RuleSetName": names.receipt_rule_set},
            physical_resource_id=cr.PhysicalResourceId.of(f"{names.receipt_rule_set}-active"),
        )
        active = cr.AwsCustomResource(
            self, "ActivateRuleSet",
            on_create=activate, on_update=activate,
            # No RuleSetName: no set is active, so CloudFormation may delete this one.
            on_delete=cr.AwsSdkCall(service="SES", action="setActiveReceiptRuleSet",
                                    parameters={}),
            # SetActiveReceiptRuleSet has no resource-level permissions.
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["ses:SetActiveReceiptRuleSet"], resources=["*"])]),
            install_latest_aws_sdk=False,
        )
        active.node.add_dependency(rule_set)
        acknowledge(active, "IAM5[Resource::*]",
                    "ses:SetActiveReceiptRuleSet has no resource-level permissions; the "
                    "deploy-time call may do nothing else.")

    def _intake(
        self, construct_id: str, *, function: str, code_dir: Path, queue: sqs.IQueue,
        prefix: str, shared: _Shared,
    ) -> lambda_.Function:
        inbound_bucket, events_queue = shared.inbound_bucket, shared.events_queue
        suppression_table, finals_table = shared.suppression_table, shared.finals_table
        policy_object = shared.policy_object
        return_path_secret_prefix = shared.return_path_secret_prefix
        log_retention = shared.log_retention
        fn = quiver_function(
            self, construct_id,
            description=f"Quiver {function.replace('_', ' ')}: s3://<inbound>/{prefix} -> "
                        "events and suppression",
            function=function, code_dir=code_dir, layer=self._layer,
            timeout=INTAKE_TIMEOUT, memory_size=512, log_retention=log_retention,
            environment={
                ENV_EVENTS_QUEUE_URL: events_queue.queue_url,
                ENV_SUPPRESSION_TABLE: suppression_table.table_name,
                ENV_FINALS_TABLE: finals_table.table_name,
                ENV_POLICY_SOURCE: policy_object.spec,
                ENV_INBOUND_BUCKET: inbound_bucket.bucket_name,
                "POWERTOOLS_SERVICE_NAME": function.replace("_", "-"),
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        fn.add_event_source(SqsEventSource(queue, batch_size=INTAKE_BATCH_SIZE,
                                           report_batch_item_failures=True))
        stack = Stack.of(self)
        statements = [
            iam.PolicyStatement(sid="ReadInboundMail", actions=["s3:GetObject"],
                                resources=[inbound_bucket.arn_for_objects(f"{prefix}*")]),
            iam.PolicyStatement(sid="PublishEvents", actions=["sqs:SendMessage"],
                                resources=[events_queue.queue_arn]),
            # Entries are put whole (the same values on a retry; an unsubscribe's put is
            # conditional, which PutItem covers); never read or removed.
            iam.PolicyStatement(sid="Suppress", actions=["dynamodb:PutItem"],
                                resources=[suppression_table.table_arn]),
            # Only the return-path references (items rp#<reference>), read one at a time.
            iam.PolicyStatement(
                sid="ReadReturnPathReferences", actions=["dynamodb:GetItem"],
                resources=[finals_table.table_arn],
                conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["rp#*"]}}),
            iam.PolicyStatement(sid="ReadPolicy", actions=["s3:GetObject"],
                                resources=[policy_object.object_arn]),
            iam.PolicyStatement(
                sid="ReadReturnPathKeys", actions=["secretsmanager:GetSecretValue"],
                # Secret ARNs end in `-<6 random characters>`, hence the trailing `*`.
                resources=[stack.format_arn(
                    service="secretsmanager", resource="secret",
                    resource_name=f"{return_path_secret_prefix}*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME)]),
        ]
        for statement in statements:
            fn.add_to_role_policy(statement)
        acknowledge_lambda_logging(fn)
        acknowledge(fn, object_wildcard(inbound_bucket, f"{prefix}*"),
                    "Inbound objects are keyed by SES message id: the grant is GetObject "
                    f"under {prefix} only, the mail this intake parses.")
        acknowledge(fn, secret_wildcard(fn, return_path_secret_prefix),
                    "Secret ARNs end in a random suffix, so the grant is a name prefix: "
                    f"only the return-path key ring under {return_path_secret_prefix}.")
        return fn


@jsii.implements(ses.IReceiptRuleAction)
class _StoreRaw:
    """SES's S3 action without the bucket policy aws-cdk's own adds: that one would be
    put on the bucket in the stateful stack from this one (a cycle, and keyed on
    aws:Referer); InboundQueues holds the policy, keyed on aws:SourceArn. SES checks
    that it may write when the rule is created, so the policy deploys first."""

    def __init__(self, *, bucket: s3.IBucket, object_key_prefix: str) -> None:
        self._bucket = bucket
        self._prefix = object_key_prefix

    def bind(self, receipt_rule: IReceiptRuleRef) -> ses.ReceiptRuleActionConfig:
        return ses.ReceiptRuleActionConfig(s3_action=ses.S3ActionConfig(
            bucket_name=self._bucket.bucket_name, object_key_prefix=self._prefix))
