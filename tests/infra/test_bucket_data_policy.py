"""Data policy: versioning, retention and access logs on the buckets that hold
recipients' data, the alarm topic's TLS-only publishing, and the export Lambda's
concurrency bound (cdk/buckets.py, cdk/observability.py, cdk/event_export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from infra_helpers import build, ref_target, render, resources
from test_events import export_function

from cdk.buckets import ACCESS_LOG_PREFIXES
from cdk.event_export import MAX_CONCURRENCY
from quiver.policy import Policy

pytestmark = pytest.mark.infra

LOGGED = {"EventsBucket": ACCESS_LOG_PREFIXES["events"],
          "InboundBucket": ACCESS_LOG_PREFIXES["inbound"]}
TLS_DENIED = {"Bool": {"aws:SecureTransport": "false"}}


def rules(template: dict[str, Any], bucket: str) -> dict[str, dict[str, Any]]:
    props = template["Resources"][bucket]["Properties"]
    return {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}


def test_events_expire_after_the_policys_retention(
    stateful: dict[str, Any], policy: Policy
) -> None:
    assert policy.data.events_retention_days == 400  # the example policy keeps the default
    assert rules(stateful, "EventsBucket")["expire"] == {
        "Id": "expire", "Status": "Enabled", "ExpirationInDays": 400}


def test_inbound_mail_keeps_its_30_days(stateful: dict[str, Any]) -> None:
    assert rules(stateful, "InboundBucket")["expire"]["ExpirationInDays"] == 30


@pytest.mark.parametrize("bucket", sorted(LOGGED))
def test_personal_data_buckets_are_versioned_with_noncurrent_expiry(
    stateful: dict[str, Any], bucket: str
) -> None:
    props = stateful["Resources"][bucket]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    noncurrent = rules(stateful, bucket)["expire-noncurrent"]
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert noncurrent["ExpiredObjectDeleteMarker"] is True
    assert rules(stateful, bucket)["abort-incomplete-uploads"][
        "AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


@pytest.mark.parametrize("bucket", sorted(LOGGED))
def test_personal_data_buckets_log_access_to_the_access_logs_bucket(
    stateful: dict[str, Any], bucket: str
) -> None:
    logging = stateful["Resources"][bucket]["Properties"]["LoggingConfiguration"]
    assert ref_target(logging["DestinationBucketName"]) == "AccessLogsBucket"
    assert logging["LogFilePrefix"] == LOGGED[bucket]


def test_only_the_personal_data_buckets_log_and_the_log_bucket_does_not_loop(
    stateful: dict[str, Any]
) -> None:
    logged = {k for k, b in resources(stateful, "AWS::S3::Bucket").items()
              if "LoggingConfiguration" in b["Properties"]}
    assert logged == set(LOGGED)
    props = stateful["Resources"]["AccessLogsBucket"]["Properties"]
    assert "VersioningConfiguration" not in props
    assert rules(stateful, "AccessLogsBucket")["expire"]["ExpirationInDays"] == 365
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_log_delivery_may_write_only_from_the_logged_buckets(stateful: dict[str, Any]) -> None:
    (policy,) = [p["Properties"] for p in resources(stateful, "AWS::S3::BucketPolicy").values()
                 if ref_target(p["Properties"]["Bucket"]) == "AccessLogsBucket"]
    statements = policy["PolicyDocument"]["Statement"]
    delivery = [s for s in statements
                if s.get("Principal") == {"Service": "logging.s3.amazonaws.com"}]
    assert delivery, "no log-delivery grant on the access-logs bucket"
    sources = set()
    for statement in delivery:
        assert statement["Effect"] == "Allow" and statement["Action"] == "s3:PutObject"
        assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {
            "Ref": "AWS::AccountId"}}
        sources.add(ref_target(statement["Condition"]["ArnLike"]["aws:SourceArn"]))
        prefix = next(p for b, p in LOGGED.items()
                      if b == ref_target(statement["Condition"]["ArnLike"]["aws:SourceArn"]))
        assert render(statement["Resource"]).endswith(f"/{prefix}*")
    assert sources == set(LOGGED)
    assert any(s["Effect"] == "Deny" and s["Condition"] == TLS_DENIED for s in statements)


def test_a_longer_retention_in_the_policy_reaches_the_bucket(
    policy_variant: Any, tmp_path: Path
) -> None:
    path = policy_variant(("[suppression]", '[data]\nevents_retention = "730d"\n\n[suppression]'))
    stacks = build(path, tmp_path / "out")
    from aws_cdk.assertions import Template

    template = Template.from_stack(stacks.stateful).to_json()
    assert rules(template, "EventsBucket")["expire"]["ExpirationInDays"] == 730


def test_alarm_topic_refuses_publishing_without_tls(service: dict[str, Any]) -> None:
    (topic,) = resources(service, "AWS::SNS::Topic")
    denied = [s for p in resources(service, "AWS::SNS::TopicPolicy").values()
              if [ref_target(t) for t in p["Properties"]["Topics"]] == [topic]
              for s in p["Properties"]["PolicyDocument"]["Statement"]
              if s["Effect"] == "Deny" and s.get("Condition") == TLS_DENIED]
    assert denied, "the alarm topic accepts publishing over plain HTTP"
    assert all(s["Principal"] == "*" and "sns:Publish" in str(s["Action"]) for s in denied)


def test_export_concurrency_is_bounded_by_its_event_source(service: dict[str, Any]) -> None:
    function_id, function = export_function(service)
    (mapping,) = [m["Properties"] for m in resources(service,
                                                      "AWS::Lambda::EventSourceMapping").values()
                  if ref_target(m["Properties"]["FunctionName"]) == function_id]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": MAX_CONCURRENCY}
    # Not reserved concurrency: throttled batches would count as receives towards the
    # events DLQ; the poller's own bound never throttles.
    assert "ReservedConcurrentExecutions" not in function
    assert 2 <= MAX_CONCURRENCY <= 1000  # what SQS event sources accept
