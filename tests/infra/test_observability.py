"""Dashboard and alarms: what an operator watches and what pages them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import only, output_source, ref_target, resources

from quiver.complaint_rate import DIMENSION_SETS
from quiver.guards.guard import PAUSES_METRIC
from quiver.policy import Policy

pytestmark = pytest.mark.infra


def alarms(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in resources(service, "AWS::CloudWatch::Alarm").items()}


def topic(service: dict[str, Any]) -> str:
    logical_id, _ = only(service, "AWS::SNS::Topic")
    return logical_id


def queue_alarm(service: dict[str, Any], stateful: dict[str, Any], metric: str,
                queue: str) -> dict[str, Any]:
    (found,) = [
        a for a in alarms(service).values()
        if a.get("MetricName") == metric and a.get("AlarmActions") == [{"Ref": topic(service)}]
        and output_source(stateful, a["Dimensions"][0]["Value"])
        == {"Fn::GetAtt": [queue, "QueueName"]}
    ]
    return found


def test_dead_letter_queues_alarm_on_the_first_message(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    for dlq in ("OutboundDeadLetterQueue", "EventsDeadLetterQueue",
                "BounceIntakeDeadLetterQueue", "FblIntakeDeadLetterQueue"):
        alarm = queue_alarm(service, stateful, "ApproximateNumberOfMessagesVisible", dlq)
        assert alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_old_outbound_mail_alarms(service: dict[str, Any], stateful: dict[str, Any]) -> None:
    alarm = queue_alarm(service, stateful, "ApproximateAgeOfOldestMessage", "OutboundQueue")
    assert alarm["Threshold"] == 30 * 60
    queue_alarm(service, stateful, "ApproximateAgeOfOldestMessage", "EventsQueue")


def test_bounce_rate_alarms_use_metric_math_per_pool_and_provider(
    service: dict[str, Any], policy: Policy
) -> None:
    bounce = {k: a for k, a in alarms(service).items() if k.startswith("ObservabilityBounceRate")}
    assert len(bounce) == len(policy.pools) * len(policy.providers)
    pairs = set()
    for alarm in bounce.values():
        metrics = {m["Id"]: m for m in alarm["Metrics"]}
        (expression,) = [m for m in metrics.values() if "Expression" in m]
        assert "b / (d + b)" in expression["Expression"]
        for metric_id, name in (("b", "bounced"), ("d", "delivered")):
            stat = metrics[metric_id]["MetricStat"]
            assert stat["Metric"]["Namespace"] == "Quiver"
            assert stat["Metric"]["MetricName"] == name
            dimensions = {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]}
            pairs.add((dimensions["pool"], dimensions["provider"]))
        assert 0 < alarm["Threshold"] < 1
    assert pairs == {(p, q) for p in policy.pools for q in policy.providers}
    composite = composite_alarm(service, "ObservabilityBounceRateHigh")
    assert composite["AlarmActions"] == [{"Ref": topic(service)}]
    rule = json.dumps(composite["AlarmRule"])
    assert all(logical_id in rule for logical_id in bounce)


def composite_alarm(service: dict[str, Any], prefix: str) -> dict[str, Any]:
    (found,) = [r["Properties"] for k, r in
                resources(service, "AWS::CloudWatch::CompositeAlarm").items()
                if k.startswith(prefix)]
    return found


def test_every_alarm_pages_except_those_the_composite_rolls_up(service: dict[str, Any]) -> None:
    scaling = {k for k in resources(service, "AWS::ApplicationAutoScaling::ScalingPolicy")}
    for logical_id, alarm in alarms(service).items():
        actions = alarm.get("AlarmActions", [])
        if logical_id.startswith(("ObservabilityBounceRate", "ObservabilityDeferralRate")):
            assert actions == []  # rolled up: the composite pages
        elif actions and isinstance(actions[0], str) and ":automate:" in actions[0]:
            continue  # an EC2 recover/reboot action; the node's status alarm pages
        elif actions and ref_target(actions[0]) in scaling:
            continue  # a scaling trigger, not a page
        else:
            assert actions == [{"Ref": topic(service)}], logical_id
            assert alarm["OKActions"] == [{"Ref": topic(service)}], logical_id


def test_dashboard_shows_queues_outcomes_lambda_and_dlqs(service: dict[str, Any]) -> None:
    _, dashboard = only(service, "AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["DashboardBody"])
    for outcome in ("delivered", "deferred", "bounced", "expired", "rejected", "failed"):
        assert f"SEARCH('{{Quiver,pool,provider}} MetricName=\\\\\\\"{outcome}\\\\\\\"'" in body
    for metric in ("ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage",
                   "Errors", "StatusCheckFailed", "RunningTaskCount"):
        assert metric in body
    assert "outbound DLQ depth" in body and "events DLQ depth" in body


# The guard: below this many deliveries in the window the rate reads 0.
RATE = re.compile(r"IF\((?P<d>d\w*) >= (?P<min>\d+), 100 \* (?P<c>c\w*) / (?P=d), 0\)")


def complaint_alarms(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: a for k, a in alarms(service).items()
            if any(m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "complaints"
                   for m in a.get("Metrics", []))}


def test_complaint_rate_alarms_warn_at_0_1_and_page_at_0_3_fleet_wide_and_per_provider(
    service: dict[str, Any], policy: Policy
) -> None:
    found: dict[tuple[tuple[str, str], ...], set[float]] = {}
    for logical_id, alarm in complaint_alarms(service).items():
        metrics = {m["Id"]: m for m in alarm["Metrics"]}
        (expression,) = [m for m in metrics.values() if "Expression" in m]
        assert expression["ReturnData"] is True
        match = RATE.fullmatch(expression["Expression"])
        assert match, expression["Expression"]
        # One complaint about three messages (or three hundred) reads 0: nothing pages.
        assert int(match["min"]) >= 1000
        stats = {}
        for metric_id, name in ((match["c"], "complaints"), (match["d"], "delivered")):
            stat = metrics[metric_id]["MetricStat"]
            assert stat["Metric"]["Namespace"] == "Quiver"
            assert stat["Metric"]["MetricName"] == name
            # A rolling day: Gmail and Yahoo judge the rate per day.
            assert (stat["Period"], stat["Stat"]) == (86400, "Sum")
            stats[name] = tuple(sorted((d["Name"], d["Value"])
                                       for d in stat["Metric"].get("Dimensions", [])))
        # Numerator and denominator of the same dimensions, a set both producers write.
        assert stats["complaints"] == stats["delivered"]
        assert tuple(sorted(n for n, _ in stats["complaints"])) in {
            tuple(sorted(s)) for s in DIMENSION_SETS}
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm["EvaluationPeriods"] == 1
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["AlarmActions"] == [{"Ref": topic(service)}], logical_id
        assert alarm["OKActions"] == [{"Ref": topic(service)}], logical_id
        found.setdefault(stats["complaints"], set()).add(alarm["Threshold"])
    expected = {(): {0.1, 0.3}} | {(("provider", p),): {0.1, 0.3} for p in policy.providers}
    assert found == expected


def test_dashboard_graphs_the_complaint_rate_and_ranks_campaigns(
    service: dict[str, Any], policy: Policy
) -> None:
    _, dashboard = only(service, "AWS::CloudWatch::Dashboard")
    body = json.loads("".join(p if isinstance(p, str) else "region"
                              for p in dashboard["DashboardBody"]["Fn::Join"][1]))
    widgets = {w["properties"].get("title"): w["properties"] for w in body["widgets"]}
    rate = widgets["complaint rate (%) per day"]
    expressions = [m[0]["expression"] for m in rate["metrics"] if isinstance(m[0], dict)]
    assert len(expressions) == 1 + len(policy.providers)
    assert all(RATE.fullmatch(e) for e in expressions)
    assert {a["value"] for a in rate["annotations"]["horizontal"]} == {0.1, 0.3}
    ranking = widgets["most complaints: tenant, campaign, provider"]
    ((query,),) = ranking["metrics"]
    # The finest dimension set both producers write, and only it.
    schema = re.search(r"FROM SCHEMA\((\w+), ([\w, ]+)\)", query["expression"])
    assert schema and schema[1] == "Quiver"
    assert tuple(schema[2].split(", ")) == DIMENSION_SETS[0]
    assert query["expression"].startswith("SELECT SUM(complaints) ")
    assert "GROUP BY tenant, campaign, provider ORDER BY SUM() DESC" in query["expression"]
    assert ranking["setPeriodToTimeRange"] is True


# deferred / attempts, judged from a minimum of attempts in the window.
DEFERRAL = re.compile(r"IF\(\((?P<d>d_\w+) \+ (?P<f>f_\w+) \+ (?P<b>b_\w+)\) >= (?P<min>\d+), "
                      r"(?P=f) / \((?P=d) \+ (?P=f) \+ (?P=b)\), 0\)")


def test_deferral_rate_alarms_per_source_and_provider_roll_up_into_one_page(
    service: dict[str, Any], policy: Policy
) -> None:
    deferral = {k: a for k, a in alarms(service).items()
                if k.startswith("ObservabilityDeferralRate")}
    providers = [*policy.providers, "none"]
    # One per (source, provider) the policy names, and the long tail (`none`).
    assert len(deferral) == len(policy.sources) * len(providers)
    pairs = set()
    for alarm in deferral.values():
        metrics = {m["Id"]: m for m in alarm["Metrics"]}
        # CloudWatch allows 10 metrics in an alarm's math; this reads 3.
        assert len(metrics) == 4
        (expression,) = [m for m in metrics.values() if "Expression" in m]
        assert expression["ReturnData"] is True
        match = DEFERRAL.fullmatch(expression["Expression"])
        assert match, expression["Expression"]
        assert int(match["min"]) >= 100
        dims = set()
        for group, name in (("d", "delivered"), ("f", "deferred"), ("b", "bounced")):
            stat = metrics[match[group]]["MetricStat"]
            assert metrics[match[group]]["ReturnData"] is False
            assert stat["Metric"]["Namespace"] == "Quiver"
            assert stat["Metric"]["MetricName"] == name
            assert (stat["Period"], stat["Stat"]) == (900, "Sum")
            dims.add(tuple(sorted((d["Name"], d["Value"])
                                  for d in stat["Metric"]["Dimensions"])))
        ((dimensions),) = dims  # all three of the same (source, provider)
        pairs.add((dict(dimensions)["source"], dict(dimensions)["provider"]))
        assert alarm["Threshold"] == 0.2
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["EvaluationPeriods"] == 1
        assert alarm["TreatMissingData"] == "notBreaching"
    assert pairs == {(s, p) for s in policy.sources for p in providers}
    composite = composite_alarm(service, "ObservabilityDeferralRateHigh")
    assert composite["AlarmActions"] == [{"Ref": topic(service)}]
    assert composite["OKActions"] == [{"Ref": topic(service)}]
    rule = json.dumps(composite["AlarmRule"])
    assert all(logical_id in rule for logical_id in deferral)


def test_a_proxy_node_most_senders_find_not_serving_for_three_minutes_pages(
    service: dict[str, Any], policy: Policy
) -> None:
    found = {}
    for logical_id, alarm in alarms(service).items():
        if alarm.get("MetricName") != "proxy_node_healthy":
            continue
        assert alarm["Namespace"] == "Quiver"
        ((dimension),) = alarm["Dimensions"]
        assert dimension["Name"] == "node"
        assert (alarm["Statistic"], alarm["Period"]) == ("Average", 60)
        assert alarm["Threshold"] == 0.5
        assert alarm["ComparisonOperator"] == "LessThanThreshold"
        assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3
        # No sender running is SendersNotRunning's page, not every node's.
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["AlarmActions"] == [{"Ref": topic(service)}], logical_id
        found[dimension["Value"]] = logical_id
    assert set(found) == set(policy.proxy.nodes)


def dashboard_widgets(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    _, dashboard = only(service, "AWS::CloudWatch::Dashboard")
    body = json.loads("".join(p if isinstance(p, str) else "x"
                              for p in dashboard["DashboardBody"]["Fn::Join"][1]))
    return {w["properties"].get("title"): w["properties"] for w in body["widgets"]}


def test_dashboard_shows_each_source_at_each_provider(
    service: dict[str, Any], policy: Policy
) -> None:
    widgets = dashboard_widgets(service)
    for outcome in ("delivered", "deferred", "bounced"):
        ((query,),) = widgets[f"{outcome} per source and provider"]["metrics"]
        assert query["expression"] == (
            f"SEARCH('{{Quiver,source,provider}} MetricName=\"{outcome}\"', 'Sum', 300)")
    ((connections,),) = widgets["open connections per source and provider (fleet)"]["metrics"]
    assert connections["expression"] == (
        "SEARCH('{Quiver,source,provider} MetricName=\"connection_seconds\"', 'Sum', 60) / 60")
    for provider in [*policy.providers, "none"]:
        rate = widgets[f"deferral rate per source at {provider}"]
        expressions = [m[0]["expression"] for m in rate["metrics"] if isinstance(m[0], dict)]
        assert len(expressions) == len(policy.sources)
        assert all(DEFERRAL.fullmatch(e) for e in expressions)
        assert [a["value"] for a in rate["annotations"]["horizontal"]] == [0.2]
    states = widgets["deferral rate alarms (source, provider)"]
    assert len(states["alarms"]) == len(policy.sources) * (len(policy.providers) + 1)
    nodes = widgets["egress nodes: HAProxy serving (share of sender probes)"]
    assert sorted(m[-1]["label"] for m in nodes["metrics"]) == sorted(policy.proxy.nodes)
    assert all(m[:2] == ["Quiver", "proxy_node_healthy"] for m in nodes["metrics"])
    gauges = widgets["mail in hand per task: held, and sendable now"]
    assert sorted(m[1] for m in gauges["metrics"]) == ["held", "sendable_now"]


def test_the_readme_states_the_deferral_math_and_the_scaling_metric_the_app_builds(
    service: dict[str, Any]
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (alarm, *_) = [a for k, a in alarms(service).items()
                   if k.startswith("ObservabilityDeferralRate")]
    (expression,) = [m["Expression"] for m in alarm["Metrics"] if "Expression" in m]
    plain = re.sub(r"([dfb])_\w+", r"\1", expression)  # the ids without their pair
    assert f"`{plain}` > {alarm['Threshold']:.2f}" in readme
    (policy,) = [r["Properties"] for r in
                 resources(service, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
                 if r["Properties"]["PolicyType"] == "TargetTrackingScaling"]
    metrics = policy["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"]["Metrics"]
    names = {m["Id"]: m["MetricStat"]["Metric"]["MetricName"] for m in metrics
             if "MetricStat" in m}
    (per_task,) = [m["Expression"] for m in metrics if "Expression" in m]
    shown = per_task.replace("sendable", f"{names['sendable']} (Average, the mean per task)")
    shown = shown.replace("visible", names["visible"]).replace("tasks", names["tasks"])
    assert f"\n{shown}\n" in readme


def test_a_guard_pause_pages_on_the_metric_the_export_writes(service: dict[str, Any]) -> None:
    (alarm,) = [a for k, a in alarms(service).items() if k.startswith(
        "ObservabilityGuardPaused")]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("Quiver", PAUSES_METRIC)
    # The dimensionless set of what the guard writes (quiver/guards/guard.py).
    assert "Dimensions" not in alarm
    assert (alarm["Statistic"], alarm["Threshold"]) == ("Sum", 1)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == [{"Ref": topic(service)}]
