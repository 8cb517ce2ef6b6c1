"""The two stacks and how their constructs are wired.

`StatefulStack` holds what must outlive any deployment: queues, buckets, the
tables and the sending addresses. It has termination protection and
every resource in it is retained. `ServiceStack` holds everything that can be
rebuilt from the repo and references the stateful resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import App, Aws, Duration, Environment, Stack, Stage
from aws_cdk import aws_cloudwatch_actions as cw_actions
from constructs import Construct

from cdk.buckets import Buckets
from cdk.deploy_checks import Placement, check_deployable
from cdk.deployed_record import ALLOW_REMOVE_CONTEXT, check_against_record
from cdk.egress_addresses import EgressAddresses
from cdk.event_analytics import EventAnalytics
from cdk.event_compaction import EventCompaction
from cdk.event_export import (
    EXPORT_VENDORED,
    EventExport,
    events_queue_visibility_timeout,
)
from cdk.inbound_mail import BOUNCE_VENDORED, FBL_VENDORED, InboundMail, InboundQueues
from cdk.ingress_http import VENDORED as INGRESS_VENDORED
from cdk.ingress_http import HttpIngress
from cdk.lambda_code import assemble_function_code
from cdk.logical_ids import logical_id_part
from cdk.nag import (
    acknowledge_generated_handlers,
    acknowledge_policy_upload,
    acknowledge_service_constructs,
    acknowledge_smtp_ingress,
)
from cdk.network import Network
from cdk.observability import Observability
from cdk.policy_object import PolicyBucket, PolicyObject
from cdk.proxy_tier import DEFAULT_INSTANCE_TYPE, ProxyNodes, image_for
from cdk.queues import Queues
from cdk.saved_queries import SavedQueries
from cdk.sender_service import SenderService
from cdk.smtp_ingress import SmtpIngress
from cdk.tables import Tables
from cdk.unsubscribe import Unsubscribe
from quiver.names import DEFAULT_PREFIX, ResourceNames, resource_names
from quiver.policy import Policy, parse_policy

DEFAULT_VPC_CIDR = "10.60.0.0/16"
# Outbound messages outlive the policy's retry horizon by a day, so a backlog never
# loses mail to SQS retention before the sender can record it as expired.
RETENTION_MARGIN = Duration.days(1)
MAX_OUTBOUND_RETENTION = Duration.days(13)


def outbound_retention(policy: Policy) -> Duration:
    seconds = policy.retry.max_age + RETENTION_MARGIN.to_seconds()
    return Duration.seconds(min(int(seconds), int(MAX_OUTBOUND_RETENTION.to_seconds())))


class StatefulStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env: Environment,
        names: ResourceNames,
        policy: Policy,
        public_ipv4_pool: str | None = None,
    ) -> None:
        super().__init__(
            scope, construct_id, env=env, termination_protection=True,
            description="Quiver stateful resources: queues, buckets, tables, sending addresses "
            "(all retained)",
        )
        self.queues = Queues(
            self, "Queues",
            names=names,
            outbound_retention=outbound_retention(policy),
            outbound_visibility_timeout=Duration.seconds(int(policy.intake.visibility_timeout)),
            events_visibility_timeout=events_queue_visibility_timeout(),
        )
        self.buckets = Buckets(
            self, "Buckets", names=names,
            events_retention=Duration.days(policy.data.events_retention_days),
        )
        self.tables = Tables(self, "Tables", names=names)
        self.inbound = InboundQueues(self, "Inbound", names=names,
                                     inbound_bucket=self.buckets.inbound)
        self.policy_bucket = PolicyBucket(self, "Policy").bucket
        self.addresses = EgressAddresses(
            self, "EgressAddresses", policy=policy, public_ipv4_pool=public_ipv4_pool,
        )
        acknowledge_generated_handlers(self)


class ServiceStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env: Environment,
        names: ResourceNames,
        prefix: str,
        policy: Policy,
        policy_text: str,
        policy_origin: str,
        placement: Placement,
        stateful: StatefulStack,
        repo_root: Path,
        vpc_cidr: str,
        alarm_email: str | None,
        dark: bool = False,
    ) -> None:
        super().__init__(
            scope, construct_id, env=env,
            description="Quiver service: network, senders, egress proxies, event export, "
            "analytics, dashboard and alarms",
        )
        queues, buckets = stateful.queues, stateful.buckets
        dkim_secret_prefix = f"{prefix}/dkim/"
        return_path_secret_prefix = f"{prefix}/return-path/"
        network = Network(
            self, "Network", cidr=vpc_cidr, availability_zones=placement.availability_zones,
            by_id=placement.by_id,
        )
        policy_object = PolicyObject(
            self, "Policy", bucket=stateful.policy_bucket, policy_text=policy_text,
            origin=policy_origin,
        )
        senders = SenderService(
            self, "Senders",
            policy=policy,
            network=network,
            image_directory=repo_root,
            outbound_queue=queues.outbound,
            outbound_max_receives=queues.outbound_max_receives,
            outbound_dlq=queues.outbound_dlq,
            events_queue=queues.events,
            spill_bucket=buckets.spill,
            events_bucket=buckets.events,
            suppression_table=stateful.tables.suppression,
            senders_table=stateful.tables.senders,
            finals_table=stateful.tables.finals,
            controls_table=stateful.tables.controls,
            policy_object=policy_object,
            dkim_secret_prefix=dkim_secret_prefix,
            return_path_secret_prefix=return_path_secret_prefix,
            dark=dark,
        )
        # New tasks read the policy at start: the object is uploaded before ECS rolls.
        senders.service.node.add_dependency(policy_object.deployment)
        proxies = ProxyNodes(
            self, "Proxies",
            policy=policy,
            network=network,
            elastic_ips=stateful.addresses.by_source,
            sender_security_group=senders.security_group,
        )
        export = EventExport(
            self, "EventExport",
            code_dir=assemble_function_code(
                repo_root=repo_root, function="event_export", outdir=_assembly_dir(self),
                vendor=EXPORT_VENDORED,
            ),
            events_queue=queues.events,
            events_bucket=buckets.events,
            finals_table=stateful.tables.finals,
            controls_table=stateful.tables.controls,
            policy_object=policy_object,
        )
        # The export reads the policy's [guards] from its first invocation.
        export.node.add_dependency(policy_object.deployment)
        # The unsubscribe endpoint verifies tokens signed with the return-path key ring,
        # so it exists once the policy names the ring's secret: deploy, read its URL
        # from the stack output, then add [unsubscribe] rules that point at it.
        self.unsubscribe = None
        if policy.return_path.key_secret is not None:
            self.unsubscribe = Unsubscribe(
                self, "Unsubscribe",
                code_dir=assemble_function_code(
                    repo_root=repo_root, function="unsubscribe", outdir=_assembly_dir(self),
                ),
                events_queue=queues.events,
                suppression_table=stateful.tables.suppression,
                key_ring_secret=policy.return_path.key_secret,
            )
        self.analytics = EventAnalytics(
            self, "EventAnalytics",
            events_bucket=buckets.events,
            results_bucket=buckets.athena_results,
            database_name=f"{prefix.replace('-', '_')}_events",
            workgroup_name=prefix,
        )
        self.compaction = EventCompaction(
            self, "EventCompaction",
            code_dir=assemble_function_code(
                repo_root=repo_root, function="event_compaction", outdir=_assembly_dir(self),
            ),
            repo_root=repo_root,
            events_bucket=buckets.events,
            analytics=self.analytics,
        )
        self.saved_queries = SavedQueries(
            self, "SavedQueries", analytics=self.analytics,
            compacted_table=self.compaction.table_name,
        )
        self.inbound = InboundMail(
            self, "InboundMail",
            policy=policy,
            names=names,
            bounce_code_dir=assemble_function_code(
                repo_root=repo_root, function="bounce_intake", outdir=_assembly_dir(self),
                vendor=BOUNCE_VENDORED),
            fbl_code_dir=assemble_function_code(
                repo_root=repo_root, function="fbl_intake", outdir=_assembly_dir(self),
                vendor=FBL_VENDORED),
            queues=stateful.inbound,
            inbound_bucket=buckets.inbound,
            events_queue=queues.events,
            suppression_table=stateful.tables.suppression,
            finals_table=stateful.tables.finals,
            policy_object=policy_object,
            return_path_secret_prefix=return_path_secret_prefix,
        )
        self.inbound.node.add_dependency(policy_object.deployment)
        # The HTTP injection API; it reads tenants (keys, domains) from the policy.
        self.http_ingress = HttpIngress(
            self, "HttpIngress",
            code_dir=assemble_function_code(
                repo_root=repo_root, function="ingress_http", outdir=_assembly_dir(self),
                vendor=INGRESS_VENDORED),
            outbound_queue=queues.outbound,
            spill_bucket=buckets.spill,
            tenant_keys_table=stateful.tables.tenant_keys,
            idempotency_table=stateful.tables.idempotency,
            policy_object=policy_object,
        )
        self.http_ingress.node.add_dependency(policy_object.deployment)
        self.observability = Observability(
            self, "Observability",
            policy=policy,
            outbound_queue=queues.outbound,
            outbound_dlq=queues.outbound_dlq,
            events_queue=queues.events,
            events_dlq=queues.events_dlq,
            export_function=export.function,
            compaction_function=self.compaction.function,
            sender_service=senders.service,
            proxy_instances=proxies.instances,
            dashboard_name=prefix,
            alarm_email=alarm_email,
            intake_dlqs=(
                ("BounceIntakeDlqNotEmpty", stateful.inbound.bounce_dlq,
                 "bounce objects kept failing the bounce intake"),
                ("FblIntakeDlqNotEmpty", stateful.inbound.fbl_dlq,
                 "complaint reports kept failing the FBL intake"),
            ),
        )
        for alarm in (self.http_ingress.server_errors, self.http_ingress.client_errors):
            alarm.add_alarm_action(cw_actions.SnsAction(self.observability.topic))
            alarm.add_ok_action(cw_actions.SnsAction(self.observability.topic))
        acknowledge_service_constructs(
            network=network, senders=senders, proxies=proxies,
            proxy_instances=proxies.instances, spill_bucket=buckets.spill,
            dkim_secret_prefix=dkim_secret_prefix,
            return_path_secret_prefix=return_path_secret_prefix,
        )
        acknowledge_generated_handlers(self)
        acknowledge_policy_upload(self, policy_bucket=stateful.policy_bucket)
        self.network = network
        self.senders = senders
        self.proxies = proxies
        self.export = export
        self.policy_object = policy_object


class IngressStack(Stack):
    """The ingress listeners: stateless, in the service stack's VPC and cluster, deployed
    on their own so a listener change never touches the senders."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env: Environment,
        stateful: StatefulStack,
        service: ServiceStack,
        repo_root: Path,
        smtp_tls_secret: str | None,
        smtp_allowed_networks: tuple[str, ...],
        dark: bool = False,
    ) -> None:
        super().__init__(scope, construct_id, env=env,
                         description="Quiver ingress: the SMTP submission listener behind "
                         "a Network Load Balancer")
        # Without a TLS secret the listener offers no AUTH: only allowed networks send.
        self.smtp = SmtpIngress(
            self, "SmtpIngress",
            network=service.network,
            cluster=service.senders.cluster,
            image_directory=repo_root,
            outbound_queue=stateful.queues.outbound,
            spill_bucket=stateful.buckets.spill,
            key_table=stateful.tables.tenant_keys,
            policy_object=service.policy_object,
            tls_secret=smtp_tls_secret,
            allowed_networks=smtp_allowed_networks,
            alarm_topic=service.observability.topic,
            dark=dark,
        )
        acknowledge_smtp_ingress(self.smtp, spill_bucket=stateful.buckets.spill)


def _assembly_dir(scope: Construct) -> Path:
    """The cloud assembly directory (cdk.out) this scope is synthesized into."""
    stage = Stage.of(scope)
    if stage is None:
        raise ValueError(f"{scope.node.path} is not inside an App or Stage")
    return Path(stage.outdir)


@dataclass(frozen=True, slots=True)
class QuiverStacks:
    stateful: StatefulStack
    service: ServiceStack
    ingress: IngressStack
    policy: Policy
    placement: Placement


def add_quiver_stacks(
    app: App,
    *,
    policy_path: Path,
    repo_root: Path,
    prefix: str = DEFAULT_PREFIX,
    vpc_cidr: str = DEFAULT_VPC_CIDR,
    public_ipv4_pool: str | None = None,
    alarm_email: str | None = None,
    dark: bool = False,
    region: str | None = None,
    smtp_tls_secret: str | None = None,
    smtp_allowed_networks: tuple[str, ...] = (),
) -> QuiverStacks:
    """Validate the policy and add both stacks; raises PolicyError or DeploymentError."""
    origin = str(policy_path)
    policy_text = policy_path.read_text(encoding="utf-8")
    policy = parse_policy(policy_text, origin=origin)
    placement = check_deployable(policy, dkim_secret_prefix=f"{prefix}/dkim/",
                                 return_path_secret_prefix=f"{prefix}/return-path/",
                                 origin=origin, region=region)
    allowed = str(app.node.try_get_context(ALLOW_REMOVE_CONTEXT) or "")
    check_against_record(policy, policy_path=policy_path,
                         image=image_for(DEFAULT_INSTANCE_TYPE),
                         allow_remove={n.strip() for n in allowed.split(",") if n.strip()})
    # Account-agnostic (the deploying credentials decide it), but pinned to the region
    # the policy's AZs are in (or quiver:region, for AZ IDs): no lookups, so synth
    # needs no AWS account.
    env = Environment(region=placement.region)
    names = resource_names(account=Aws.ACCOUNT_ID, region=Aws.REGION, prefix=prefix)
    stack_prefix = logical_id_part(prefix)
    stateful = StatefulStack(
        app, f"{stack_prefix}Stateful",
        env=env, names=names, policy=policy, public_ipv4_pool=public_ipv4_pool,
    )
    service = ServiceStack(
        app, f"{stack_prefix}Service",
        env=env, names=names, prefix=prefix, policy=policy, policy_text=policy_text,
        policy_origin=origin, placement=placement, stateful=stateful, repo_root=repo_root,
        vpc_cidr=vpc_cidr, alarm_email=alarm_email, dark=dark,
    )
    service.add_stack_dependency(stateful)
    ingress = IngressStack(
        app, f"{stack_prefix}Ingress",
        env=env, stateful=stateful, service=service, repo_root=repo_root,
        smtp_tls_secret=smtp_tls_secret, smtp_allowed_networks=smtp_allowed_networks,
        dark=dark,
    )
    ingress.add_stack_dependency(service)
    return QuiverStacks(stateful=stateful, service=service, ingress=ingress, policy=policy,
                        placement=placement)
