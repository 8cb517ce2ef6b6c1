"""The sender: an ECS Fargate service reading the outbound queue.

Rollouts keep full capacity (new tasks start before old ones stop) and roll back
by themselves when new tasks do not stay up. A stopping task gets SIGTERM, stops
receiving, drains within the policy's drain deadline and makes every unfinished
message visible again; ECS waits `stopTimeout` (drain deadline + 20 s, 120 s by
default) before SIGKILL.
Capacity follows the mail that more tasks would send sooner, per task, and the age of
the oldest message. A task has one vCPU for its event loop and one per DKIM signing
thread of the policy.
"""

from __future__ import annotations

import re
from pathlib import Path

from aws_cdk import Annotations, ArnFormat, Aws, Duration, RemovalPolicy, Size, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.deploy_checks import MEMORY_MIB_PER_VCPU, stop_timeout_seconds, task_vcpus
from cdk.network import Network
from cdk.policy_object import PolicyObject
from quiver import settings
from quiver.emf import NAMESPACE
from quiver.policy import Policy
from quiver.sender.gauges import SENDABLE_NOW
from quiver.status.server import DEFAULT_PORT as STATUS_PORT
from quiver.storage.dynamo_rates import PK as RATE_PARTITION
from quiver.storage.dynamo_warmup import PK as WARMUP_PARTITION

CONTAINER_NAME = "sender"
ENV_POLICY_RESTART_DIGEST = "QUIVER_POLICY_RESTART_DIGEST"
# ECS runs this inside the container (so loopback reaches the status endpoint) with
# the image's own Python: python:3.11-slim has no curl. urlopen raises on a 503, so
# a stalled event loop fails the check.
HEALTH_CHECK = (
    "python -c \"import urllib.request; urllib.request.urlopen("
    f"'http://127.0.0.1:{STATUS_PORT}/healthz', timeout=4)\" || exit 1"
)
# A failed check (the loop stalled past --loop-stall, 30 s) is retried twice 30 s
# apart before ECS replaces the task: a wedged sender goes within about 2 minutes, a
# slow moment does not. The start period covers the policy read and the first join.
HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTH_RETRIES, HEALTH_START = 30, 5, 3, 60
# The image's base, pinned by digest (scripts/pin-base-image.sh writes it): the
# Dockerfile's BASE_IMAGE build argument.
BASE_IMAGE_FILE = "image/base-image"
PINNED_BASE = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")
# Scale out fast when the oldest message waits this long: mail is getting late.
OLDEST_MESSAGE_STEPS = ((300, 2), (900, 4))
# The controls table's partitions a sender task may write (dynamodb:LeadingKeys): the
# adaptive engine's suspensions ("control") and shared rates ("adaptive-rate"), and the
# warm-up caps taken, a day's outcomes and the warm-up day ("warmup"). A new kind of
# sender-written state adds its partition here.
SENDER_WRITABLE_PARTITIONS: tuple[str, ...] = (RATE_PARTITION, "control", WARMUP_PARTITION)


class SenderService(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        policy: Policy,
        network: Network,
        image_directory: Path,
        outbound_queue: sqs.IQueue,
        outbound_max_receives: int,
        outbound_dlq: sqs.IQueue,
        events_queue: sqs.IQueue,
        spill_bucket: s3.IBucket,
        events_bucket: s3.IBucket,
        suppression_table: dynamodb.ITable,
        senders_table: dynamodb.ITable,
        finals_table: dynamodb.ITable,
        policy_object: PolicyObject,
        dkim_secret_prefix: str,
        return_path_secret_prefix: str = "",
        cpu: int | None = None,
        memory_mib: int | None = None,
        min_tasks: int = 2,
        max_tasks: int = 20,
        backlog_per_task: int | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        controls_table: dynamodb.ITable | None = None,
        dark: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        # Dark: everything is deployed but no sender runs and autoscaling cannot start
        # one, so nothing sends from addresses whose PTR, SPF and port 25 are not ready
        # (the first deploy allocates the addresses those depend on).
        self.dark = dark
        if min_tasks < 2:
            raise ValueError("min_tasks must be at least 2: one task per AZ survives an AZ loss")
        self.stop_timeout = Duration.seconds(stop_timeout_seconds(policy))
        # One vCPU for the event loop and one per signing worker, unless given.
        vcpus = task_vcpus(policy)
        cpu = cpu or 1024 * vcpus
        memory_mib = memory_mib or MEMORY_MIB_PER_VCPU * vcpus
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup",
            vpc=network.vpc,
            description="Quiver senders: only to the proxy tier and AWS endpoints",
            allow_all_outbound=False,
        )
        # AWS APIs only through the VPC's endpoints; the proxy tier adds its own ports.
        https = ec2.Port.tcp(443)
        self.security_group.connections.allow_to(
            network.endpoint_security_group, https, "AWS APIs through interface endpoints",
        )
        for prefix_list, what in ((network.s3_prefix_list, "S3"),
                                  (network.dynamodb_prefix_list, "DynamoDB")):
            self.security_group.add_egress_rule(
                prefix_list, https, f"{what} through its gateway endpoint",
            )
        self.cluster = ecs.Cluster(
            self, "Cluster",
            vpc=network.vpc,
            # Container Insights provides RunningTaskCount, the denominator of backlog per task.
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        task = ecs.FargateTaskDefinition(
            self, "Task",
            cpu=cpu,
            memory_limit_mib=memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        self.task_role = task.task_role
        log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY,
        )
        environment = {
            settings.ENV_OUTBOUND_QUEUE_URL: outbound_queue.queue_url,
            settings.ENV_OUTBOUND_DLQ_URL: outbound_dlq.queue_url,
            settings.ENV_EVENTS_QUEUE_URL: events_queue.queue_url,
            settings.ENV_SPILL_BUCKET: spill_bucket.bucket_name,
            settings.ENV_EVENTS_BUCKET: events_bucket.bucket_name,
            settings.ENV_SUPPRESSION_TABLE: suppression_table.table_name,
            settings.ENV_SENDERS_TABLE: senders_table.table_name,
            settings.ENV_FINALS_TABLE: finals_table.table_name,
            # Operator controls (`quiver ctl`), polled by every task; "" without one.
            settings.ENV_CONTROLS_TABLE: controls_table.table_name if controls_table else "",
            settings.ENV_POLICY_SOURCE: policy_object.spec,
            # The hash of the policy sections a sender takes only at start: a change
            # there changes the task definition, so ECS rolls the senders by itself;
            # a change to live sections only (throttles, retry...) leaves it as is.
            ENV_POLICY_RESTART_DIGEST: policy_object.restart_digest,
            # The queue's redrive limit: the sender records `failed` finals one receive
            # before SQS would move a message to the DLQ without them.
            settings.ENV_OUTBOUND_MAX_RECEIVES: str(outbound_max_receives),
            # The ring the unsubscribe endpoint verifies with; the sender itself reads
            # it from policy, this names it for tools run in the task.
            settings.ENV_KEY_RING_SECRET: policy.return_path.key_secret or "",
            "AWS_REGION": Aws.REGION,
        }
        container = task.add_container(
            CONTAINER_NAME,
            container_name=CONTAINER_NAME,
            image=ecs.ContainerImage.from_asset(
                str(image_directory),
                file="Dockerfile",
                build_args={"BASE_IMAGE": base_image(image_directory, scope=self)},
                # Built by `cdk deploy` for Fargate's X86_64, whatever the deploying machine.
                platform=ecr_assets.Platform.LINUX_AMD64,
            ),
            # The status endpoint listens on every interface of the task's own network
            # namespace, but the security group admits nothing in: only the health
            # check (run inside the container) and tools on the task reach it.
            command=["sender", "--config", policy_object.spec,
                     "--status-port", str(STATUS_PORT), "--status-bind", "0.0.0.0"],
            environment=environment,
            health_check=ecs.HealthCheck(
                command=["CMD-SHELL", HEALTH_CHECK],
                interval=Duration.seconds(HEALTH_INTERVAL),
                timeout=Duration.seconds(HEALTH_TIMEOUT),
                retries=HEALTH_RETRIES,
                start_period=Duration.seconds(HEALTH_START),
            ),
            essential=True,
            stop_timeout=self.stop_timeout,
            readonly_root_filesystem=True,
            ulimits=[ecs.Ulimit(name=ecs.UlimitName.NOFILE, soft_limit=65536, hard_limit=65536)],
            # Non-blocking: a slow log service must not stall delivery. The price is
            # that lines (and EMF metrics) beyond a full buffer are dropped.
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix=CONTAINER_NAME,
                log_group=log_group,
                mode=ecs.AwsLogDriverMode.NON_BLOCKING,
                max_buffer_size=Size.mebibytes(25),
            ),
        )
        # The root filesystem is read-only; the task's own scratch volume is its /tmp.
        task.add_volume(name="tmp")
        container.add_mount_points(ecs.MountPoint(
            container_path="/tmp", source_volume="tmp", read_only=False,  # noqa: S108
        ))
        self._grant(
            queues=(outbound_queue, outbound_dlq, events_queue),
            spill_bucket=spill_bucket,
            tables=(suppression_table, senders_table, finals_table),
            dkim_secret_prefix=dkim_secret_prefix,
            # Only a policy with bounce domains signs return paths, and only one with
            # unsubscribe rules signs unsubscribe tokens (deploy_checks holds the
            # ring's key_secret under this prefix).
            return_path_secret_prefix=return_path_secret_prefix
            if policy.return_path.enabled or policy.unsubscribe.enabled else None,
            return_path_references=policy.return_path.enabled,
        )
        policy_object.grant_read(self.task_role)
        if controls_table is not None:
            # A sender reads every control; `quiver ctl`, run with an operator's
            # credentials, writes the operator's.
            self.task_role.add_to_principal_policy(iam.PolicyStatement(
                sid="ReadOperatorControls",
                actions=["dynamodb:Query", "dynamodb:Scan", "dynamodb:GetItem"],
                resources=[controls_table.table_arn],
            ))
            # The adaptive engine's suspensions and shared rates, and the warm-up counts,
            # written only under their own partition keys. No delete, so a sender cannot
            # lift an operator's pause or stop.
            self.task_role.add_to_principal_policy(iam.PolicyStatement(
                sid="WriteSenderPartitions",
                actions=["dynamodb:PutItem", "dynamodb:UpdateItem"],
                resources=[controls_table.table_arn],
                conditions={"ForAllValues:StringEquals": {
                    "dynamodb:LeadingKeys": list(SENDER_WRITABLE_PARTITIONS)}},
            ))
        self.service = ecs.FargateService(
            self, "Service",
            cluster=self.cluster,
            task_definition=task,
            security_groups=[self.security_group],
            vpc_subnets=network.sender_subnets,
            assign_public_ip=False,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            availability_zone_rebalancing=ecs.AvailabilityZoneRebalancing.ENABLED,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            desired_count=0 if dark else None,
        )
        self._autoscale(
            outbound_queue=outbound_queue,
            min_tasks=0 if dark else min_tasks,
            max_tasks=0 if dark else max_tasks,
            backlog_per_task=backlog_per_task or policy.intake.max_inflight_messages,
        )

    def _grant(
        self,
        *,
        queues: tuple[sqs.IQueue, sqs.IQueue, sqs.IQueue],
        spill_bucket: s3.IBucket,
        tables: tuple[dynamodb.ITable, dynamodb.ITable, dynamodb.ITable],
        dkim_secret_prefix: str,
        return_path_secret_prefix: str | None,
        return_path_references: bool = False,
    ) -> None:
        outbound, outbound_dlq, events = queues
        suppression, senders, finals = tables
        statements = [
            iam.PolicyStatement(
                sid="ConsumeAndRequeueOutbound",
                actions=["sqs:ReceiveMessage", "sqs:DeleteMessage",
                         "sqs:ChangeMessageVisibility", "sqs:SendMessage"],
                resources=[outbound.queue_arn],
            ),
            iam.PolicyStatement(
                sid="DeadLetterBadInputAndSendEvents",
                actions=["sqs:SendMessage"],
                resources=[outbound_dlq.queue_arn, events.queue_arn],
            ),
            iam.PolicyStatement(
                sid="SpilledBodies",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[spill_bucket.arn_for_objects("*")],
            ),
            # Recipients are checked in batches; synchronous hard bounces are added in
            # batches (quiver.suppression): nothing else, no deletes.
            iam.PolicyStatement(
                sid="SuppressionList",
                actions=["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
                resources=[suppression.table_arn],
            ),
            iam.PolicyStatement(
                sid="SenderHeartbeats",
                actions=["dynamodb:PutItem", "dynamodb:Query", "dynamodb:DeleteItem"],
                resources=[senders.table_arn],
            ),
            # Read-only: the export Lambda writes the claims; a redelivered message's
            # recipients that already have a final event are skipped.
            iam.PolicyStatement(
                sid="FinalEventsOfRedeliveredMessages",
                actions=["dynamodb:Query"],
                resources=[finals.table_arn],
            ),
            iam.PolicyStatement(
                sid="ReadDkimKeys",
                actions=["secretsmanager:GetSecretValue"],
                # Secret ARNs end in `-<6 random characters>`, hence the trailing `*`.
                resources=[Stack.of(self).format_arn(
                    service="secretsmanager",
                    resource="secret",
                    resource_name=f"{dkim_secret_prefix}*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )],
            ),
        ]
        if return_path_references:
            # What each return-path token stands for, written before its mail is
            # sent (items rp#<reference>; quiver.storage.dynamo.DynamoReturnPaths).
            statements.append(iam.PolicyStatement(
                sid="ReturnPathReferences",
                actions=["dynamodb:BatchWriteItem"],
                resources=[finals.table_arn],
            ))
        if return_path_secret_prefix:
            statements += [
                iam.PolicyStatement(
                    sid="ReadReturnPathKeys",
                    actions=["secretsmanager:GetSecretValue"],
                    resources=[Stack.of(self).format_arn(
                        service="secretsmanager",
                        resource="secret",
                        resource_name=f"{return_path_secret_prefix}*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )],
                ),
            ]
        for statement in statements:
            self.task_role.add_to_principal_policy(statement)

    def _autoscale(
        self,
        *,
        outbound_queue: sqs.IQueue,
        min_tasks: int,
        max_tasks: int,
        backlog_per_task: int,
    ) -> None:
        target = appscaling.ScalableTarget(
            self, "Scaling",
            service_namespace=appscaling.ServiceNamespace.ECS,
            resource_id=f"service/{self.cluster.cluster_name}/{self.service.service_name}",
            scalable_dimension="ecs:service:DesiredCount",
            min_capacity=min_tasks,
            max_capacity=max_tasks,
            # The service-linked role Application Auto Scaling uses for ECS anyway.
            role=iam.Role.from_role_arn(
                self, "ScalingRole",
                Stack.of(self).format_arn(
                    service="iam", region="",
                    resource="role",
                    resource_name="aws-service-role/ecs.application-autoscaling.amazonaws.com/"
                    "AWSServiceRoleForApplicationAutoScaling_ECSService",
                ),
            ),
        )
        query = appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty
        stat = appscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty
        metric = appscaling.CfnScalingPolicy.TargetTrackingMetricProperty
        dim = appscaling.CfnScalingPolicy.TargetTrackingMetricDimensionProperty
        # Sendable mail per task = the mean per task of the senders' sendable_now (mail in
        # hand that no connection limit, rate or backoff holds back) + the visible
        # backlog / running tasks. Visible excludes delayed messages, and every deferral
        # and not-yet-due retry waits in the queue with DelaySeconds (lifecycle), so what
        # is visible is due now. Mail that waits on a throttle in a task's hands is left
        # out: more tasks divide a cluster-wide limit, they do not raise it. Target
        # tracking holds the sum near one task's in-flight messages. Visible mail behind
        # a fleet whose hands are full of throttled mail still counts: a new task takes
        # in the mail for other destinations queued behind it, and holds no slot of a
        # limit already spread over more tasks than it has connections.
        appscaling.CfnScalingPolicy(
            self, "SendablePerTask",
            policy_name="quiver-sender-sendable-per-task",
            policy_type="TargetTrackingScaling",
            scaling_target_id=target.scalable_target_id,
            target_tracking_scaling_policy_configuration=(
                appscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty(
                    target_value=float(backlog_per_task),
                    scale_out_cooldown=60,
                    scale_in_cooldown=300,
                    customized_metric_specification=(
                        appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                            metrics=[
                                query(id="visible", return_data=False, metric_stat=stat(
                                    stat="Sum",
                                    metric=metric(
                                        namespace="AWS/SQS",
                                        metric_name="ApproximateNumberOfMessagesVisible",
                                        dimensions=[dim(name="QueueName",
                                                        value=outbound_queue.queue_name)],
                                    ),
                                )),
                                query(id="tasks", return_data=False, metric_stat=stat(
                                    stat="Average",
                                    metric=metric(
                                        namespace="ECS/ContainerInsights",
                                        metric_name="RunningTaskCount",
                                        dimensions=[
                                            dim(name="ClusterName",
                                                value=self.cluster.cluster_name),
                                            dim(name="ServiceName",
                                                value=self.service.service_name),
                                        ],
                                    ),
                                )),
                                query(id="sendable", return_data=False, metric_stat=stat(
                                    stat="Average",
                                    metric=metric(namespace=NAMESPACE,
                                                  metric_name=SENDABLE_NOW),
                                )),
                                query(id="per_task", expression="sendable + visible / tasks",
                                      label="Sendable mail per task", return_data=True),
                            ],
                        )
                    ),
                )
            ),
        )
        target.scale_on_metric(
            "OldestMessageAge",
            metric=outbound_queue.metric_approximate_age_of_oldest_message(
                period=Duration.minutes(1), statistic="Maximum",
            ),
            scaling_steps=[
                appscaling.ScalingInterval(upper=OLDEST_MESSAGE_STEPS[0][0], change=0),
                *(appscaling.ScalingInterval(lower=age, change=tasks)
                  for age, tasks in OLDEST_MESSAGE_STEPS),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.minutes(3),
        )


def base_image(image_directory: Path, *, scope: Construct) -> str:
    """The base image reference recorded in the repo; a synth warning while it names a
    tag without a digest (a rebuild of the same commit could then differ)."""
    reference = (image_directory / BASE_IMAGE_FILE).read_text(encoding="utf-8").strip()
    if not reference.startswith("python:3.11-slim"):
        raise ValueError(f"{BASE_IMAGE_FILE}: expected python:3.11-slim[@sha256:...], "
                         f"got {reference!r}")
    if not PINNED_BASE.match(reference):
        Annotations.of(scope).add_warning_v2(
            "quiver:unpinned-base-image",
            f"{BASE_IMAGE_FILE} names {reference!r} without a digest: run "
            "scripts/pin-base-image.sh on a machine with registry access and commit it",
        )
    return reference
