"""Dashboard and alarms; every alarm notifies one SNS topic.

Delivery metrics come from the sender's embedded metric format (EMF) log lines:
namespace `Quiver`, metrics delivered/deferred/bounced/expired/rejected/failed, with the
dimensions `pool` and `provider`. The bounce-rate alarms watch each (pool, provider)
pair that the policy names: a provider blocking one pool is the signal that matters,
and an alarm's math may reference at most 10 metrics, which rules out summing them all.

The complaint rate divides the FBL intake's `complaints` by the sender's `delivered`,
both written per (tenant, campaign, provider) and also per tenant, per provider and
with no dimension (quiver.complaint_rate): its alarms, fleet-wide and per provider
of the policy, each read two metrics, and the finest set feeds the dashboard's ranking.

Per egress source (IP) and provider (quiver.sender.source_metrics): the deferral
rate, deferred / (delivered + deferred + bounced), alarms for each source of the
policy at each of its providers and at `none` (every other domain), all known at
synth. Each alarm's math reads three metrics (the limit is 10), and each is billed
as three alarm metrics: 5 sources x 4 providers cost 20 alarms, about $6 a month;
they roll up into one composite that pages. Deferrals come before bounces: a
provider that starts refusing an IP defers it first (421 4.7.28, TSS04).

Proxy node health as the senders see it (quiver.sender.gauges): every task writes
1 or 0 per node at each flush; a node whose Average stays below one half (most
observations found HAProxy not serving) for PROXY_NODE_DOWN_MINUTES pages. The EC2
status check does not see a dead HAProxy on a live instance; this does.

Tenant guards (quiver.guards, in the export Lambda) write `guard_pauses` with no
dimension for each tenant or campaign they pause: `GuardPaused` pages on any.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.logical_ids import logical_id_part
from quiver.complaint_rate import COMPLAINTS, DELIVERED
from quiver.complaint_rate import NAMESPACE as COMPLAINT_RATE_NAMESPACE
from quiver.guards.guard import PAUSES_METRIC
from quiver.policy import Policy
from quiver.sender.gauges import HELD, NODE, PROXY_NODE_HEALTHY, SENDABLE_NOW
from quiver.sender.source_metrics import CONNECTION_SECONDS, PROVIDER, SOURCE, UNKNOWN

NAMESPACE = "Quiver"
OUTCOMES = ("delivered", "deferred", "bounced", "expired", "rejected", "failed")
# Bounce rate is judged only over this many attempts per window: three bounces out
# of five messages is noise, not a block.
BOUNCE_RATE_MIN_VOLUME = 100
BOUNCE_RATE_PERIOD = Duration.minutes(15)
# Complaint rate = complaints / delivered over a rolling day, in percent. Gmail and
# Yahoo judge a sender's spam rate per day, and people complain hours after the mail
# arrived: over an hour the rate would read low while a campaign goes out and high in
# the hours after it.
COMPLAINT_RATE_PERIOD = Duration.days(1)
# Gmail's bulk-sender guidelines: keep it below 0.1 %, never reach 0.3 %.
COMPLAINT_RATE_WARNING = 0.1
COMPLAINT_RATE_CRITICAL = 0.3
# Judged only from this many deliveries in the window (Gmail's bulk-sender volume, a
# day's 5,000 messages): the warning then takes 5 complaints and the critical 15, so
# one complaint about three messages pages nobody.
COMPLAINT_RATE_MIN_DELIVERED = 5000
# The dashboard's ranking: the (tenant, campaign, provider) with the most complaints
# over the dashboard's time range. SCHEMA keeps to the metrics of exactly these
# dimensions: the coarser sets count the same complaints again.
TOP_COMPLAINTS_QUERY = (
    "SELECT SUM(complaints) FROM SCHEMA(Quiver, tenant, campaign, provider) "
    "GROUP BY tenant, campaign, provider ORDER BY SUM() DESC LIMIT 10"
)
# Deferral rate per (source, provider) = deferred / attempts over 15 minutes, judged
# from this many attempts: a slow hour at a small provider is not a block. A fifth of
# attempts deferred for a quarter of an hour is a provider pushing back on that IP
# (a healthy source defers a few percent: greylisting, full mailboxes).
DEFERRAL_RATE_PERIOD = Duration.minutes(15)
DEFERRAL_RATE_MIN_VOLUME = 100
DEFERRAL_RATE_THRESHOLD = 0.20
# A node most senders find not serving for this long pages; shorter would page for a
# restart that a policy change causes (HAProxy reloads in seconds, a node in ~2 min).
PROXY_NODE_DOWN_MINUTES = 3
# Outbound mail this old means senders are down, throttled or too few.
OLDEST_OUTBOUND_AGE = Duration.minutes(30)
OLDEST_EVENT_AGE = Duration.minutes(15)


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        policy: Policy,
        outbound_queue: sqs.IQueue,
        outbound_dlq: sqs.IQueue,
        events_queue: sqs.IQueue,
        events_dlq: sqs.IQueue,
        export_function: lambda_.IFunction,
        compaction_function: lambda_.IFunction | None,
        sender_service: ecs.FargateService,
        proxy_instances: Mapping[str, ec2.CfnInstance],
        dashboard_name: str,
        alarm_email: str | None = None,
        oldest_outbound_age: Duration = OLDEST_OUTBOUND_AGE,
        oldest_event_age: Duration = OLDEST_EVENT_AGE,
        bounce_rate_threshold: float = 0.05,
        deferral_rate_threshold: float = DEFERRAL_RATE_THRESHOLD,
        intake_dlqs: Sequence[tuple[str, sqs.IQueue, str]] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        # Publishing over plain HTTP is refused by the topic's policy (CloudWatch
        # publishes over TLS; anyone else must too).
        self.topic = sns.Topic(self, "AlarmTopic", display_name="Quiver alarms",
                               enforce_ssl=True)
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: list[cw.IAlarm] = []

        def page(alarm: cw.Alarm | cw.CompositeAlarm) -> None:
            """Notify the topic when `alarm` fires and when it recovers."""
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
            self.alarms.append(alarm)

        five_minutes = Duration.minutes(5)
        for alarm_id, dlq, what in (
            ("OutboundDlqNotEmpty", outbound_dlq, "outbound messages were dead-lettered"),
            ("EventsDlqNotEmpty", events_dlq, "event batches failed export"),
            # (alarm id, DLQ, what it means) of the inbound-mail intakes.
            *intake_dlqs,
        ):
            page(dlq.metric_approximate_number_of_messages_visible(
                period=five_minutes, statistic="Maximum",
            ).create_alarm(
                self, alarm_id,
                alarm_description=f"{what}: inspect the DLQ, fix, then redrive",
                threshold=1, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        for alarm_id, queue, age, what in (
            ("OutboundOldestMessage", outbound_queue, oldest_outbound_age,
             "mail is waiting: senders are down, throttled or too few"),
            ("EventsOldestMessage", events_queue, oldest_event_age,
             "event export is stalled"),
        ):
            page(queue.metric_approximate_age_of_oldest_message(
                period=Duration.minutes(1), statistic="Maximum",
            ).create_alarm(
                self, alarm_id,
                alarm_description=f"{what} (oldest message older than {age.to_human_string()})",
                threshold=age.to_seconds(), evaluation_periods=5, datapoints_to_alarm=5,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        page(export_function.metric_errors(
            period=five_minutes, statistic="Sum",
        ).create_alarm(
            self, "ExportErrors",
            alarm_description="the event-export Lambda fails whole invocations",
            threshold=1, evaluation_periods=3, datapoints_to_alarm=3,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        ))
        if compaction_function is not None:
            # Hourly runs, each retrying the last day's closed hours not yet compacted: one
            # failed run heals itself; two in a row leave the compacted table behind.
            page(compaction_function.metric_errors(
                period=Duration.hours(1), statistic="Sum",
            ).create_alarm(
                self, "CompactionErrors",
                alarm_description="the event compaction failed two hourly runs in a row: "
                                  "the compacted table falls behind (the raw one is whole)",
                threshold=1, evaluation_periods=2, datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        # Every pause a tenant guard puts in force (the export writes the EMF): a
        # tenant's or campaign's mail now waits, which someone must look at.
        page(cw.Metric(
            namespace=NAMESPACE, metric_name=PAUSES_METRIC, period=five_minutes,
            statistic="Sum",
        ).create_alarm(
            self, "GuardPaused",
            alarm_description="a tenant guard paused a tenant or campaign (complaint or "
                              "hard bounce rate over its threshold) and its mail waits: "
                              "`quiver ctl list` gives the reason; fix the list, then "
                              "`quiver ctl resume`",
            threshold=1, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        ))
        running_tasks = cw.Metric(
            namespace="ECS/ContainerInsights", metric_name="RunningTaskCount",
            dimensions_map={
                "ClusterName": sender_service.cluster.cluster_name,
                "ServiceName": sender_service.service_name,
            },
            period=Duration.minutes(1), statistic="Minimum",
        )
        page(running_tasks.create_alarm(
            self, "SendersNotRunning",
            alarm_description="no sender task is running: nothing is being delivered",
            threshold=1, evaluation_periods=3, datapoints_to_alarm=3,
            comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.BREACHING,
        ))
        node_alarms: list[cw.Alarm] = []
        for name, instance in sorted(proxy_instances.items()):
            alarm_id = f"ProxyNode{logical_id_part(name)}Unhealthy"
            node_alarm = cw.Metric(
                namespace="AWS/EC2", metric_name="StatusCheckFailed",
                dimensions_map={"InstanceId": instance.ref},
                period=Duration.minutes(1), statistic="Maximum",
            ).create_alarm(
                self, alarm_id,
                alarm_description=f"egress node {name} fails its status checks; its sources "
                "cannot send (the pools' other sources carry on)",
                threshold=1, evaluation_periods=2, datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                # No data means a stopped or terminated node: that is unhealthy too.
                treat_missing_data=cw.TreatMissingData.BREACHING,
            )
            page(node_alarm)
            node_alarms.append(node_alarm)
        bounce_alarms = self._bounce_alarms(policy, bounce_rate_threshold)
        if bounce_alarms:
            page(cw.CompositeAlarm(
                self, "BounceRateHigh",
                alarm_description=(
                    f"bounce rate above {bounce_rate_threshold:.0%} for a (pool, provider) "
                    "pair: check the pool's reputation and the bounce events"
                ),
                alarm_rule=cw.AlarmRule.any_of(*bounce_alarms),
            ))
        for alarm in self._complaint_alarms(policy):
            page(alarm)
        self.deferral_alarms = self._deferral_alarms(policy, deferral_rate_threshold)
        if self.deferral_alarms:
            page(cw.CompositeAlarm(
                self, "DeferralRateHigh",
                alarm_description=(
                    f"deferral rate above {deferral_rate_threshold:.0%} for an (egress source, "
                    "provider) pair over 15 minutes: the dashboard's deferral-rate alarms "
                    "name it; read its deferred events' responses, and slow or pause it"
                ),
                alarm_rule=cw.AlarmRule.any_of(*self.deferral_alarms),
            ))
        for node in sorted(policy.proxy.nodes):
            page(proxy_node_healthy(node, statistic="Average").create_alarm(
                self, f"ProxyNode{logical_id_part(node)}NotServing",
                alarm_description=(
                    f"most sender probes of egress node {node} have found HAProxy not "
                    f"serving for {PROXY_NODE_DOWN_MINUTES} minutes; its sources carry no "
                    "mail (the pools' other sources carry on): check haproxy on the node"
                ),
                threshold=0.5, evaluation_periods=PROXY_NODE_DOWN_MINUTES,
                datapoints_to_alarm=PROXY_NODE_DOWN_MINUTES,
                comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                # No data: no sender is running, which SendersNotRunning reports.
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        self.dashboard = self._dashboard(
            policy=policy,
            dashboard_name=dashboard_name,
            queues=(
                ("outbound", outbound_queue, outbound_dlq), ("events", events_queue, events_dlq),
            ),
            export_function=export_function,
            running_tasks=running_tasks,
            sender_service=sender_service,
            proxy_instances=proxy_instances,
        )

    def _bounce_alarms(self, policy: Policy, threshold: float) -> list[cw.Alarm]:
        alarms: list[cw.Alarm] = []
        for pool in sorted(policy.pools):
            for provider in sorted(policy.providers):
                def outcome(name: str, pool: str = pool, provider: str = provider) -> cw.Metric:
                    return cw.Metric(
                        namespace=NAMESPACE, metric_name=name,
                        dimensions_map={"pool": pool, "provider": provider},
                        period=BOUNCE_RATE_PERIOD, statistic="Sum",
                    )

                rate = cw.MathExpression(
                    expression=f"IF((d + b) >= {BOUNCE_RATE_MIN_VOLUME}, b / (d + b), 0)",
                    using_metrics={"d": outcome("delivered"), "b": outcome("bounced")},
                    label=f"bounce rate {pool}/{provider}",
                    period=BOUNCE_RATE_PERIOD,
                )
                alarm_id = f"BounceRate{logical_id_part(pool)}{logical_id_part(provider)}"
                alarms.append(rate.create_alarm(
                    self, alarm_id,
                    alarm_description=f"bounce rate of pool {pool} at {provider}",
                    threshold=threshold, evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ))
        return alarms

    def _deferral_alarms(self, policy: Policy, threshold: float) -> list[cw.Alarm]:
        """One alarm per (source, provider) of the policy, `none` included; they page
        through the composite."""
        alarms: list[cw.Alarm] = []
        for source in sorted(policy.sources):
            for provider in [*sorted(policy.providers), UNKNOWN]:
                alarm_id = (f"DeferralRate{logical_id_part(source)}"
                            f"{logical_id_part(provider)}")
                alarms.append(deferral_rate(source, provider).create_alarm(
                    self, alarm_id,
                    alarm_description=f"deferral rate of source {source} at {provider}",
                    threshold=threshold, evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ))
        return alarms

    def _complaint_alarms(self, policy: Policy) -> list[cw.Alarm]:
        """Warning and critical complaint-rate alarms, fleet-wide and per provider."""
        alarms: list[cw.Alarm] = []
        scopes: list[tuple[str, str, str | None]] = [("Fleet", "all mail", None)]
        scopes += [(f"Provider{logical_id_part(p)}", f"mail to {p}", p)
                   for p in sorted(policy.providers)]
        for scope_id, scope, provider in scopes:
            rate = complaint_rate(provider, label=f"complaint rate (%), {scope}")
            for severity, threshold, what in (
                ("Warning", COMPLAINT_RATE_WARNING,
                 "find the campaign in the dashboard's ranking and slow or stop it"),
                ("Critical", COMPLAINT_RATE_CRITICAL,
                 "mailbox providers now filter or refuse this mail: stop the campaign"),
            ):
                alarms.append(rate.create_alarm(
                    self, f"ComplaintRate{scope_id}{severity}",
                    alarm_description=(
                        f"{severity.lower()}: complaint rate of {scope} at or above "
                        f"{threshold} % over a day of at least "
                        f"{COMPLAINT_RATE_MIN_DELIVERED} deliveries; {what}"
                    ),
                    threshold=threshold, evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ))
        return alarms

    def _dashboard(
        self,
        *,
        policy: Policy,
        dashboard_name: str,
        queues: tuple[tuple[str, sqs.IQueue, sqs.IQueue], ...],
        export_function: lambda_.IFunction,
        running_tasks: cw.Metric,
        sender_service: ecs.FargateService,
        proxy_instances: Mapping[str, ec2.CfnInstance],
    ) -> cw.Dashboard:
        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=dashboard_name)
        minute = Duration.minutes(1)
        dashboard.add_widgets(cw.AlarmStatusWidget(
            title="Alarms", alarms=self.alarms, width=24, height=4,
        ))
        for label, queue, dlq in queues:
            dashboard.add_widgets(
                cw.GraphWidget(
                    title=f"{label} queue depth", width=8,
                    left=[
                        queue.metric_approximate_number_of_messages_visible(period=minute),
                        queue.metric_approximate_number_of_messages_not_visible(period=minute),
                    ],
                ),
                cw.GraphWidget(
                    title=f"{label} oldest message (s)", width=8,
                    left=[queue.metric_approximate_age_of_oldest_message(
                        period=minute, statistic="Maximum")],
                ),
                cw.GraphWidget(
                    title=f"{label} DLQ depth", width=8,
                    left=[dlq.metric_approximate_number_of_messages_visible(
                        period=minute, statistic="Maximum")],
                ),
            )
        outcome_widgets = [
            cw.GraphWidget(
                title=f"{outcome} per pool and provider", width=8,
                left=[cw.MathExpression(
                    expression=(
                        f"SEARCH('{{{NAMESPACE},pool,provider}} MetricName=\"{outcome}\"', "
                        "'Sum', 300)"
                    ),
                    label="",
                    period=Duration.minutes(5),
                )],
            )
            for outcome in OUTCOMES
        ]
        dashboard.add_widgets(*outcome_widgets[:3])
        dashboard.add_widgets(*outcome_widgets[3:])
        dashboard.add_widgets(
            cw.GraphWidget(
                title="complaint rate (%) per day", width=12,
                left=[complaint_rate(None, label="all mail"), *(
                    complaint_rate(p, label=p) for p in sorted(policy.providers))],
                left_annotations=[
                    cw.HorizontalAnnotation(value=COMPLAINT_RATE_WARNING, label="warning"),
                    cw.HorizontalAnnotation(value=COMPLAINT_RATE_CRITICAL, label="critical"),
                ],
            ),
            cw.GraphWidget(
                title="most complaints: tenant, campaign, provider", width=12,
                view=cw.GraphWidgetView.BAR, set_period_to_time_range=True,
                left=[cw.MathExpression(expression=TOP_COMPLAINTS_QUERY, label="",
                                        period=COMPLAINT_RATE_PERIOD)],
            ),
        )
        self._source_widgets(dashboard, policy)
        dashboard.add_widgets(
            cw.GraphWidget(
                title="senders", width=8,
                left=[running_tasks.with_(statistic="Average")],
                right=[sender_service.metric_cpu_utilization(period=minute)],
            ),
            cw.GraphWidget(
                title="mail in hand per task: held, and sendable now", width=8,
                left=[task_gauge(HELD), task_gauge(SENDABLE_NOW)],
            ),
            cw.GraphWidget(
                title="egress nodes: HAProxy serving (share of sender probes)", width=8,
                left=[proxy_node_healthy(node, statistic="Average").with_(label=node)
                      for node in sorted(policy.proxy.nodes)],
                left_y_axis=cw.YAxisProps(min=0, max=1),
                left_annotations=[cw.HorizontalAnnotation(value=0.5, label="alarm")],
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="event export Lambda", width=12,
                left=[export_function.metric_invocations(period=minute),
                      export_function.metric_errors(period=minute),
                      export_function.metric_throttles(period=minute)],
                right=[export_function.metric_duration(period=minute, statistic="p99")],
            ),
            cw.GraphWidget(
                title="egress nodes: status check failed / network out", width=12,
                left=[
                    cw.Metric(namespace="AWS/EC2", metric_name="StatusCheckFailed",
                              dimensions_map={"InstanceId": instance.ref},
                              label=name, period=minute, statistic="Maximum")
                    for name, instance in sorted(proxy_instances.items())
                ],
                right=[
                    cw.Metric(namespace="AWS/EC2", metric_name="NetworkOut",
                              dimensions_map={"InstanceId": instance.ref},
                              label=name, period=minute, statistic="Sum")
                    for name, instance in sorted(proxy_instances.items())
                ],
            ),
        )
        return dashboard


    def _source_widgets(self, dashboard: cw.Dashboard, policy: Policy) -> None:
        """Which IP is in trouble at which provider: outcomes, open connections and the
        deferral rate per (source, provider), and the deferral alarms' states."""
        def search(metric: str, statistic: str, seconds: int) -> str:
            return (f"SEARCH('{{{NAMESPACE},{SOURCE},{PROVIDER}}} "
                    f"MetricName=\"{metric}\"', '{statistic}', {seconds})")

        dashboard.add_widgets(*(
            cw.GraphWidget(
                title=f"{outcome} per source and provider", width=8,
                left=[cw.MathExpression(expression=search(outcome, "Sum", 300), label="",
                                        period=Duration.minutes(5))],
            )
            for outcome in ("delivered", "deferred", "bounced")
        ))
        providers = [*sorted(policy.providers), UNKNOWN]
        dashboard.add_widgets(*(
            cw.GraphWidget(
                title=f"deferral rate per source at {provider}",
                width=max(6, 24 // len(providers)),
                left=[deferral_rate(source, provider).with_(label=source)
                      for source in sorted(policy.sources)],
                left_y_axis=cw.YAxisProps(min=0, max=1),
                left_annotations=[cw.HorizontalAnnotation(
                    value=DEFERRAL_RATE_THRESHOLD, label="default alarm")],
            )
            for provider in providers
        ))
        dashboard.add_widgets(
            cw.GraphWidget(
                title="open connections per source and provider (fleet)", width=12,
                # connection-seconds per minute / 60 = the minute's average connections.
                left=[cw.MathExpression(
                    expression=f"{search(CONNECTION_SECONDS, 'Sum', 60)} / 60",
                    label="", period=Duration.minutes(1))],
            ),
            cw.AlarmStatusWidget(
                title="deferral rate alarms (source, provider)", width=12, height=6,
                alarms=list(self.deferral_alarms),
            ),
        )


def deferral_rate(source: str, provider: str) -> cw.MathExpression:
    """deferred / (delivered + deferred + bounced) of one (source, provider) over
    DEFERRAL_RATE_PERIOD; 0 below DEFERRAL_RATE_MIN_VOLUME attempts. The sender writes
    the three counts together (zeros included), so they meet at every timestamp."""
    suffix = f"_{logical_id_part(source).lower()}_{logical_id_part(provider).lower()}"
    d, f, b = f"d{suffix}", f"f{suffix}", f"b{suffix}"

    def count(name: str) -> cw.Metric:
        return cw.Metric(namespace=NAMESPACE, metric_name=name,
                         dimensions_map={SOURCE: source, PROVIDER: provider},
                         period=DEFERRAL_RATE_PERIOD, statistic="Sum")

    total = f"({d} + {f} + {b})"
    return cw.MathExpression(
        expression=f"IF({total} >= {DEFERRAL_RATE_MIN_VOLUME}, {f} / {total}, 0)",
        using_metrics={d: count("delivered"), f: count("deferred"), b: count("bounced")},
        label=f"deferral rate {source}/{provider}", period=DEFERRAL_RATE_PERIOD,
    )


def proxy_node_healthy(node: str, *, statistic: str) -> cw.Metric:
    return cw.Metric(namespace=NAMESPACE, metric_name=PROXY_NODE_HEALTHY,
                     dimensions_map={NODE: node}, period=Duration.minutes(1),
                     statistic=statistic)


def task_gauge(name: str) -> cw.Metric:
    """A per-task gauge without dimensions; its Average is the mean per task."""
    return cw.Metric(namespace=NAMESPACE, metric_name=name, period=Duration.minutes(1),
                     statistic="Average", label=f"{name} (mean per task)")


def complaint_rate(provider: str | None, *, label: str) -> cw.MathExpression:
    """complaints / delivered in percent over COMPLAINT_RATE_PERIOD, fleet-wide (the
    metrics without dimensions) or of one provider; 0 below COMPLAINT_RATE_MIN_DELIVERED
    deliveries. No complaint in the window is no data (the alarms: not breaching)."""
    dimensions = {PROVIDER: provider} if provider is not None else {}
    # Ids unique per provider: a graph of several rates may not reuse one for another.
    suffix = f"_{logical_id_part(provider).lower()}" if provider is not None else ""
    c, d = f"c{suffix}", f"d{suffix}"

    def count(name: str) -> cw.Metric:
        return cw.Metric(namespace=COMPLAINT_RATE_NAMESPACE, metric_name=name,
                         dimensions_map=dimensions, period=COMPLAINT_RATE_PERIOD,
                         statistic="Sum")

    return cw.MathExpression(
        expression=f"IF({d} >= {COMPLAINT_RATE_MIN_DELIVERED}, 100 * {c} / {d}, 0)",
        using_metrics={c: count(COMPLAINTS), d: count(DELIVERED)},
        label=label, period=COMPLAINT_RATE_PERIOD,
    )
