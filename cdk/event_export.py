"""The event-export Lambda: batches from the events queue to gzip'd JSONL in S3.

It reads the events queue through an SQS event source and reports partial batch
failures, so one bad record is retried (and, after the queue's maxReceiveCount,
dead-lettered) without redoing the whole batch. It can write only under `events/`
in the events bucket, and read and write only the claims in the finals table that
make final events exactly-once (cdk/tables.py). The tenant guards run in it
(quiver.guards): it reads the deployed policy's object, keeps its counters in the
controls table's `guard…` partitions, and may put (never change or delete) a pause
in the controls partition.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from aws_cdk.aws_lambda_event_sources import SqsEventSource
from constructs import Construct

from cdk.buckets import EVENTS_PREFIX
from cdk.lambda_code import handler_path
from cdk.nag import acknowledge, acknowledge_lambda_logging, object_wildcard
from cdk.policy_object import PolicyObject
from quiver.settings import (
    ENV_CONTROLS_TABLE,
    ENV_EVENTS_BUCKET,
    ENV_FINALS_TABLE,
    ENV_POLICY_SOURCE,
)

EXPORT_TIMEOUT = Duration.seconds(60)
# Waiting up to this long for a fuller batch means fewer, larger S3 objects.
BATCHING_WINDOW = Duration.seconds(30)
BATCH_SIZE = 100
METRICS_NAMESPACE = "Quiver"
# The official public Powertools for AWS Lambda (Python) v3 layer, published by AWS
# in every commercial region under this account. Bump the version deliberately.
POWERTOOLS_LAYER_ACCOUNT = "017000801446"
POWERTOOLS_LAYER_VERSION = 27
# The newest Python Lambda runtime this aws-cdk-lib offers. The code needs 3.11 or
# later (pyproject.toml); what the functions import besides it, the Powertools layer
# and the vendored dnspython and dkimpy, each declare 3.14. The layer is built per
# Python version, so its name follows the runtime (powertools_layer_arn).
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64
# At most this many export invocations at once, enforced by the SQS poller (the
# event source's maximum concurrency): a burst waits in the queue instead of taking
# the account's Lambda concurrency from every other function. Reserved concurrency
# would bound it too, but the poller would go on handing batches to a throttled
# function; each throttle returns the batch to the queue as one more receive, and
# after EVENTS_MAX_RECEIVES (cdk/queues.py) a burst's events end in the DLQ.
# Twenty invocations of BATCH_SIZE queue messages per BATCHING_WINDOW is far above
# what the senders publish (one message carries a sender's batch of events).
MAX_CONCURRENCY = 20
# What the export needs beyond the runtime and the Powertools layer: dnspython, for
# the policy it loads to read `[guards]` (the policy's routes are dnspython types).
EXPORT_VENDORED = ("dns",)
# The controls table's partitions the guards write (quiver/guards/store.py): their
# counters and crossing states, and their batch claims. A pause goes to the
# operator controls' partition, put only.
GUARD_PARTITIONS = ("guard|*", "guard-batch|*")
CONTROL_PARTITION = "control"


def events_queue_visibility_timeout() -> Duration:
    """AWS's rule for a queue feeding Lambda: 6x the function timeout plus the window.

    A shorter visibility would let a batch that is still being written reappear and be
    exported twice; retries by Lambda's poller also need the headroom.
    """
    return Duration.seconds(6 * EXPORT_TIMEOUT.to_seconds() + BATCHING_WINDOW.to_seconds())


def powertools_layer_arn(version: int = POWERTOOLS_LAYER_VERSION) -> str:
    """The Powertools layer built for RUNTIME ("python3.14" -> "python314") and ARM."""
    python = RUNTIME.name.replace(".", "")
    return (
        f"arn:aws:lambda:{Aws.REGION}:{POWERTOOLS_LAYER_ACCOUNT}:layer:"
        f"AWSLambdaPowertoolsPythonV3-{python}-arm64:{version}"
    )


def quiver_function(
    scope: Construct, construct_id: str, *, description: str, function: str, code_dir: Path,
    layer: lambda_.ILayerVersion, timeout: Duration, memory_size: int,
    environment: dict[str, str], log_retention: logs.RetentionDays,
    reserved_concurrency: int | None = None,
) -> lambda_.Function:
    """One of Quiver's Lambdas: `functions/<function>/handler.py` on RUNTIME and
    ARCHITECTURE with the Powertools `layer`, logging to a log group of its own
    (`<construct_id>Logs`, kept `log_retention`, removed with the stack)."""
    log_group = logs.LogGroup(scope, f"{construct_id}Logs", retention=log_retention,
                              removal_policy=RemovalPolicy.DESTROY)
    return lambda_.Function(
        scope, f"{construct_id}Function",
        description=description, runtime=RUNTIME, architecture=ARCHITECTURE,
        handler=handler_path(function), code=lambda_.Code.from_asset(str(code_dir)),
        layers=[layer], timeout=timeout, memory_size=memory_size,
        reserved_concurrent_executions=reserved_concurrency, log_group=log_group,
        environment=environment,
    )


def powertools_layer(scope: Construct, version: int) -> lambda_.ILayerVersion:
    return lambda_.LayerVersion.from_layer_version_arn(
        scope, "Powertools", powertools_layer_arn(version))


class EventExport(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        events_queue: sqs.IQueue,
        events_bucket: s3.IBucket,
        finals_table: dynamodb.ITable,
        controls_table: dynamodb.ITable,
        policy_object: PolicyObject,
        powertools_layer_version: int = POWERTOOLS_LAYER_VERSION,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        max_concurrency: int = MAX_CONCURRENCY,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = quiver_function(
            self, "",
            description="Quiver event export: events queue -> s3://<events bucket>/events/",
            function="event_export", code_dir=code_dir,
            layer=powertools_layer(self, powertools_layer_version),
            timeout=EXPORT_TIMEOUT, memory_size=512, log_retention=log_retention,
            environment={
                ENV_EVENTS_BUCKET: events_bucket.bucket_name,
                ENV_FINALS_TABLE: finals_table.table_name,
                ENV_CONTROLS_TABLE: controls_table.table_name,
                ENV_POLICY_SOURCE: policy_object.spec,
                "POWERTOOLS_SERVICE_NAME": "event-export",
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        self.function.add_event_source(SqsEventSource(
            events_queue,
            batch_size=BATCH_SIZE,
            max_batching_window=BATCHING_WINDOW,
            report_batch_item_failures=True,
            max_concurrency=max_concurrency,
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="WriteEventObjects",
            actions=["s3:PutObject"],
            resources=[events_bucket.arn_for_objects(f"{EVENTS_PREFIX}*")],
        ))
        acknowledge_lambda_logging(self.function)
        acknowledge(self.function, object_wildcard(events_bucket, f"{EVENTS_PREFIX}*"),
                    "Event objects have generated keys: the grant is PutObject under the "
                    "export's prefix, the only place the Glue table reads.")
        # Claims are read in batches and written in batches, never one by one and
        # never updated or deleted (TTL removes them).
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ClaimFinalEvents",
            actions=["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
            resources=[finals_table.table_arn],
        ))
        policy_object.grant_read(self.function)
        # Guard counters: added to (UpdateItem, in transactions with the batch claim's
        # PutItem) and read a window at a time (Query), in the guard partitions only.
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="CountGuards",
            actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
            resources=[controls_table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys":
                                                    list(GUARD_PARTITIONS)}},
        ))
        # A guard's pause is an operator control: put, in the same transaction as its
        # crossing state; lifting it is an operator's (`quiver ctl resume`).
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="PutGuardPauses",
            actions=["dynamodb:PutItem"],
            resources=[controls_table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys":
                                                      [CONTROL_PARTITION]}},
        ))
