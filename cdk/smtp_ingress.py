"""The SMTP submission listener: Fargate tasks behind a Network Load Balancer.

The NLB passes TCP through (STARTTLS is the listener's own) and writes a PROXY v2
header first, so each task knows the client's address for its allow-list and logs;
the tasks drop any connection that does not start with one. The balancer is
internal by default: submission comes from the company's own services.

Each task writes its counts as EMF lines (quiver.ingress.smtp_metrics): the alarms
watch refused logins and 4xx/5xx replies, and the service scales on connections
per task. On SIGTERM a task stops accepting and lets open transactions finish
within `STOP_TIMEOUT` (the listener's --stop-timeout is a few seconds shorter).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.network import Network
from cdk.policy_object import PolicyObject
from cdk.sender_service import base_image
from quiver import settings
from quiver.emf import NAMESPACE
from quiver.ingress import smtp_metrics

CONTAINER_NAME = "smtp-ingress"
SUBMISSION_PORT = 587
STOP_TIMEOUT = Duration.seconds(40)
LISTENER_STOP_SECONDS = 30  # inside STOP_TIMEOUT, so the listener closes sessions itself
# Target tracking holds open connections per task near this: aiosmtpd's sessions are
# cheap, and the enqueue threads (32 per task) are what a task's throughput is bound by.
CONNECTIONS_PER_TASK = 400
# Alarm thresholds, per 5 minutes across the service.
REFUSED_LOGINS_ALARM = 50  # a client with a stale key, or someone guessing keys
REPLIES_5XX_ALARM = 100
REPLIES_4XX_ALARM = 100  # mostly 451 4.3.0 (the queue unreachable) and rate limits


class SmtpIngress(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        network: Network,
        cluster: ecs.ICluster,
        image_directory: Path,
        outbound_queue: sqs.IQueue,
        spill_bucket: s3.IBucket,
        key_table: dynamodb.ITable | None = None,
        policy_object: PolicyObject | None = None,
        tls_secret: str | None = None,
        allowed_networks: Sequence[str] = (),
        ports: Sequence[int] = (SUBMISSION_PORT,),
        internet_facing: bool = False,
        alarm_topic: sns.ITopic | None = None,
        min_tasks: int = 2,
        max_tasks: int = 10,
        dark: bool = False,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        if min_tasks < 2:
            raise ValueError("min_tasks must be at least 2: one task per AZ survives an AZ loss")
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=network.vpc, allow_all_outbound=False,
            description="Quiver SMTP ingress: SMTP in from the NLB, AWS endpoints out",
        )
        # Target type IP without client IP preservation: connections come from the
        # NLB's addresses in the VPC (the client's is in the PROXY header).
        for port in ports:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(network.vpc.vpc_cidr_block), ec2.Port.tcp(port),
                "SMTP from the Network Load Balancer's nodes in the VPC")
        https = ec2.Port.tcp(443)
        self.security_group.connections.allow_to(
            network.endpoint_security_group, https, "AWS APIs through interface endpoints")
        for prefix_list, what in ((network.s3_prefix_list, "S3"),
                                  (network.dynamodb_prefix_list, "DynamoDB")):
            self.security_group.add_egress_rule(prefix_list, https,
                                                f"{what} through its gateway endpoint")
        task = ecs.FargateTaskDefinition(
            self, "Task", cpu=1024, memory_limit_mib=2048,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX),
        )
        self.task_role = task.task_role
        log_group = logs.LogGroup(self, "Logs", retention=log_retention,
                                  removal_policy=RemovalPolicy.DESTROY)
        command = ["ingress", "smtp", "--host", "0.0.0.0", "--port", str(SUBMISSION_PORT),
                   "--proxy-protocol", "--metrics",
                   "--stop-timeout", str(LISTENER_STOP_SECONDS)]
        if tls_secret:
            command += ["--tls-secret", tls_secret]
        if policy_object is not None:
            # [tenants] (who may send from which domain) and [content] (the size limit)
            # are read at start; a policy change reaches the listener with its next task.
            command += ["--config", policy_object.spec]
        for spec in allowed_networks:
            command += ["--allow-network", spec]
        environment = {
            settings.ENV_OUTBOUND_QUEUE_URL: outbound_queue.queue_url,
            settings.ENV_SPILL_BUCKET: spill_bucket.bucket_name,
            "AWS_REGION": Aws.REGION,
            **({settings.ENV_TENANT_KEYS_TABLE: key_table.table_name}
               if key_table is not None else {}),
        }
        container = task.add_container(
            CONTAINER_NAME, container_name=CONTAINER_NAME,
            image=ecs.ContainerImage.from_asset(
                str(image_directory), file="Dockerfile",
                build_args={"BASE_IMAGE": base_image(image_directory, scope=self)},
                platform=ecr_assets.Platform.LINUX_AMD64),
            command=command, environment=environment, essential=True,
            stop_timeout=STOP_TIMEOUT, readonly_root_filesystem=True,
            port_mappings=[ecs.PortMapping(container_port=SUBMISSION_PORT)],
            ulimits=[ecs.Ulimit(name=ecs.UlimitName.NOFILE, soft_limit=65536, hard_limit=65536)],
            logging=ecs.LogDrivers.aws_logs(stream_prefix=CONTAINER_NAME, log_group=log_group,
                                            mode=ecs.AwsLogDriverMode.NON_BLOCKING),
        )
        # The TLS secret is unpacked into a temporary directory at start.
        task.add_volume(name="tmp")
        container.add_mount_points(ecs.MountPoint(
            container_path="/tmp", source_volume="tmp", read_only=False))  # noqa: S108
        self._grant(outbound_queue=outbound_queue, spill_bucket=spill_bucket,
                    key_table=key_table, tls_secret=tls_secret)
        if policy_object is not None:
            policy_object.grant_read(self.task_role)
        self.service = ecs.FargateService(
            self, "Service", cluster=cluster, task_definition=task,
            security_groups=[self.security_group], vpc_subnets=network.sender_subnets,
            assign_public_ip=False, min_healthy_percent=100, max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            desired_count=0 if dark else None,
        )
        self.load_balancer = elbv2.NetworkLoadBalancer(
            self, "LoadBalancer", vpc=network.vpc, internet_facing=internet_facing,
            vpc_subnets=(ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
                         if internet_facing else network.sender_subnets),
            cross_zone_enabled=True,
        )
        self.target_group = elbv2.NetworkTargetGroup(
            self, "Targets", vpc=network.vpc, port=SUBMISSION_PORT,
            protocol=elbv2.Protocol.TCP, target_type=elbv2.TargetType.IP,
            proxy_protocol_v2=True, preserve_client_ip=False,
            # Open sessions get the listener's own shutdown (421 after their transaction).
            deregistration_delay=Duration.seconds(LISTENER_STOP_SECONDS),
            health_check=elbv2.HealthCheck(protocol=elbv2.Protocol.TCP,
                                           interval=Duration.seconds(10)),
            targets=[self.service.load_balancer_target(
                container_name=CONTAINER_NAME, container_port=SUBMISSION_PORT)],
        )
        for port in ports:
            self.load_balancer.add_listener(
                f"Port{port}", port=port, protocol=elbv2.Protocol.TCP,
                default_target_groups=[self.target_group])
        self._autoscale(min_tasks=0 if dark else min_tasks, max_tasks=0 if dark else max_tasks)
        self.alarms = self._alarms(alarm_topic)

    def _grant(self, *, outbound_queue: sqs.IQueue, spill_bucket: s3.IBucket,
               key_table: dynamodb.ITable | None, tls_secret: str | None) -> None:
        statements = [
            iam.PolicyStatement(sid="EnqueueOutbound", actions=["sqs:SendMessage"],
                                resources=[outbound_queue.queue_arn]),
            # The queue client spills large bodies under spill/ (quiver.client); it
            # never reads them back.
            iam.PolicyStatement(sid="SpillLargeBodies", actions=["s3:PutObject"],
                                resources=[spill_bucket.arn_for_objects("spill/*")]),
        ]
        if key_table is not None:
            statements.append(iam.PolicyStatement(
                sid="ReadTenantKeys", actions=["dynamodb:GetItem", "dynamodb:Query"],
                resources=[key_table.table_arn]))
        if tls_secret:
            arn = tls_secret if tls_secret.startswith("arn:") else Stack.of(self).format_arn(
                service="secretsmanager", resource="secret", resource_name=f"{tls_secret}-*",
                arn_format=ArnFormat.COLON_RESOURCE_NAME)
            statements.append(iam.PolicyStatement(
                sid="ReadTlsCertificate", actions=["secretsmanager:GetSecretValue"],
                resources=[arn]))
        for statement in statements:
            self.task_role.add_to_principal_policy(statement)

    def _metric(self, name: str, statistic: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=NAMESPACE, metric_name=name,
                                 dimensions_map=dict(smtp_metrics.DIMENSIONS),
                                 statistic=statistic, period=Duration.minutes(5))

    def _autoscale(self, *, min_tasks: int, max_tasks: int) -> None:
        scaling = self.service.auto_scale_task_count(min_capacity=min_tasks,
                                                     max_capacity=max_tasks)
        # Each task writes its open connections as a gauge: the average is per task.
        scaling.scale_to_track_custom_metric(
            "ConnectionsPerTask",
            metric=cloudwatch.Metric(
                namespace=NAMESPACE, metric_name=smtp_metrics.CONNECTIONS,
                dimensions_map=dict(smtp_metrics.DIMENSIONS), statistic="Average",
                period=Duration.minutes(1)),
            target_value=CONNECTIONS_PER_TASK,
            scale_out_cooldown=Duration.minutes(1), scale_in_cooldown=Duration.minutes(5))

    def _alarms(self, topic: sns.ITopic | None) -> list[cloudwatch.Alarm]:
        alarms = []
        for construct_id, metric, threshold, what in (
            ("RefusedLogins", smtp_metrics.AUTH_REFUSED, REFUSED_LOGINS_ALARM,
             "SMTP AUTH refused: a client with a revoked or wrong key, or key guessing"),
            ("Replies5xx", smtp_metrics.REPLIES_5XX, REPLIES_5XX_ALARM,
             "SMTP ingress refused many commands or messages (5xx)"),
            ("Replies4xx", smtp_metrics.REPLIES_4XX, REPLIES_4XX_ALARM,
             "SMTP ingress deferred many (4xx): the queue unreachable (451 4.3.0) or "
             "tenants over their limits"),
        ):
            alarm = cloudwatch.Alarm(
                self, construct_id, metric=self._metric(metric, "Sum"), threshold=threshold,
                evaluation_periods=1, alarm_description=what,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
            if topic is not None:
                alarm.add_alarm_action(cw_actions.SnsAction(topic))
                alarm.add_ok_action(cw_actions.SnsAction(topic))
            alarms.append(alarm)
        return alarms
