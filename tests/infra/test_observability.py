"""Dashboard and alarms: what an operator watches and what pages them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infra_helpers import only, output_source, ref_target, resources

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
    _, composite = only(service, "AWS::CloudWatch::CompositeAlarm")
    assert composite["AlarmActions"] == [{"Ref": topic(service)}]
    rule = json.dumps(composite["AlarmRule"])
    assert all(logical_id in rule for logical_id in bounce)


def test_every_alarm_pages_except_those_the_composite_rolls_up(service: dict[str, Any]) -> None:
    scaling = {k for k in resources(service, "AWS::ApplicationAutoScaling::ScalingPolicy")}
    for logical_id, alarm in alarms(service).items():
        actions = alarm.get("AlarmActions", [])
        if logical_id.startswith("ObservabilityBounceRate"):
            assert actions == []
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
