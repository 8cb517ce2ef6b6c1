"""The stateful stack: queues, buckets, tables and sending addresses, retained and pinned."""

from __future__ import annotations

from typing import Any

import pytest
from infra_helpers import ref_target, render, resources

from quiver.names import resource_names
from quiver.policy import Policy
from quiver.storage.finals import TTL_SECONDS as FINALS_TTL_SECONDS

pytestmark = pytest.mark.infra

STATEFUL_TYPES = ("AWS::SQS::Queue", "AWS::S3::Bucket", "AWS::DynamoDB::Table", "AWS::EC2::EIP")
# Changing any of these IDs makes CloudFormation delete the resource and create an
# empty one. This list is the guard: a refactor that changes it must not merge.
PINNED = {
    "OutboundQueue", "OutboundDeadLetterQueue", "EventsQueue", "EventsDeadLetterQueue",
    "BounceIntakeQueue", "BounceIntakeDeadLetterQueue", "FblIntakeQueue",
    "FblIntakeDeadLetterQueue",
    "SpillBucket", "EventsBucket", "InboundBucket", "AthenaResultsBucket", "AccessLogsBucket",
    "PolicyBucket",
    "SuppressionTable", "SendersTable", "FinalsTable", "ControlsTable", "TenantKeysTable",
    "IdempotencyTable",
    "EgressIpTx1", "EgressIpTx2", "EgressIpBulk1", "EgressIpBulk2", "EgressIpBulk3",
}


def stateful_resources(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] in STATEFUL_TYPES}


def test_stateful_logical_ids_are_exactly_the_pinned_ones(stateful: dict[str, Any]) -> None:
    assert set(stateful_resources(stateful)) == PINNED


def test_every_policy_source_has_a_pinned_elastic_ip(
    stateful: dict[str, Any], policy: Policy
) -> None:
    eips = resources(stateful, "AWS::EC2::EIP")
    by_source = {
        tag["Value"]: logical_id
        for logical_id, r in eips.items()
        for tag in r["Properties"]["Tags"] if tag["Key"] == "quiver:source"
    }
    assert set(by_source) == set(policy.sources)
    for logical_id in by_source.values():
        assert eips[logical_id]["Properties"]["Domain"] == "vpc"


def test_stateful_resources_are_retained(stateful: dict[str, Any]) -> None:
    for logical_id, resource in stateful_resources(stateful).items():
        assert resource.get("DeletionPolicy") == "Retain", logical_id
        assert resource.get("UpdateReplacePolicy") == "Retain", logical_id


def test_stateful_stack_has_termination_protection(synth: Any) -> None:
    assert synth.stacks.stateful.termination_protection is True
    assert not synth.stacks.service.termination_protection


def test_service_stack_holds_no_stateful_resource(service: dict[str, Any]) -> None:
    # The service stack may be destroyed and rebuilt; nothing in it may hold data.
    assert stateful_resources(service) == {}


def test_names_match_the_local_stack(stateful: dict[str, Any]) -> None:
    names = resource_names(account="${AWS::AccountId}", region="${AWS::Region}")
    props = {k: r["Properties"] for k, r in stateful["Resources"].items()}
    assert props["OutboundQueue"]["QueueName"] == names.outbound_queue
    assert props["OutboundDeadLetterQueue"]["QueueName"] == names.outbound_dlq
    assert props["EventsQueue"]["QueueName"] == names.events_queue
    assert props["EventsDeadLetterQueue"]["QueueName"] == names.events_dlq
    assert props["BounceIntakeQueue"]["QueueName"] == names.bounce_queue
    assert props["BounceIntakeDeadLetterQueue"]["QueueName"] == names.bounce_dlq
    assert props["FblIntakeQueue"]["QueueName"] == names.fbl_queue
    assert props["FblIntakeDeadLetterQueue"]["QueueName"] == names.fbl_dlq
    assert render(props["SpillBucket"]["BucketName"]) == names.spill_bucket
    assert render(props["EventsBucket"]["BucketName"]) == names.events_bucket
    assert render(props["InboundBucket"]["BucketName"]) == names.inbound_bucket
    assert props["SuppressionTable"]["TableName"] == names.suppression_table
    assert props["SendersTable"]["TableName"] == names.senders_table
    assert props["FinalsTable"]["TableName"] == names.finals_table


def test_queues_are_encrypted_and_refuse_plain_http(stateful: dict[str, Any]) -> None:
    queues = resources(stateful, "AWS::SQS::Queue")
    assert len(queues) == 8
    for props in (q["Properties"] for q in queues.values()):
        assert props["SqsManagedSseEnabled"] is True
    denied = set()
    for policy in resources(stateful, "AWS::SQS::QueuePolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (statement["Effect"] == "Deny"
                    and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}):
                denied.update(ref_target(q) for q in policy["Properties"]["Queues"])
    assert denied == set(queues)


def test_dead_letter_queues_outlive_their_sources(stateful: dict[str, Any]) -> None:
    queues = {k: r["Properties"] for k, r in resources(stateful, "AWS::SQS::Queue").items()}
    sources = {k: p for k, p in queues.items() if "RedrivePolicy" in p}
    assert set(sources) == {"OutboundQueue", "EventsQueue", "BounceIntakeQueue",
                            "FblIntakeQueue"}
    for name, props in sources.items():
        redrive = props["RedrivePolicy"]
        dlq = queues[ref_target(redrive["deadLetterTargetArn"])]
        assert dlq["MessageRetentionPeriod"] == 14 * 86400
        # SQS keeps the original enqueue time in the DLQ: it must keep messages longer.
        assert dlq["MessageRetentionPeriod"] > props["MessageRetentionPeriod"], name
        assert 1 < redrive["maxReceiveCount"] <= 10, name


def test_outbound_queue_follows_the_policy(stateful: dict[str, Any], policy: Policy) -> None:
    props = stateful["Resources"]["OutboundQueue"]["Properties"]
    assert props["VisibilityTimeout"] == policy.intake.visibility_timeout
    # Retention covers the whole retry horizon plus a day of backlog.
    assert props["MessageRetentionPeriod"] == policy.retry.max_age + 86400
    assert props["MaximumMessageSize"] == 256 * 1024


def test_buckets_block_public_access_encrypt_and_require_tls(stateful: dict[str, Any]) -> None:
    buckets = resources(stateful, "AWS::S3::Bucket")
    # spill, events, inbound, Athena results, access logs, policy
    assert len(buckets) == 6
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True,
            "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }, logical_id
        (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256", logical_id
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    tls_only = set()
    for policy in resources(stateful, "AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if (statement["Effect"] == "Deny" and statement["Action"] == "s3:*"
                    and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}):
                tls_only.add(ref_target(policy["Properties"]["Bucket"]))
    assert tls_only == set(buckets)


def test_spilled_bodies_expire_after_15_days(stateful: dict[str, Any]) -> None:
    rules = stateful["Resources"]["SpillBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if "ExpirationInDays" in r]
    assert expiring == [{"Id": "expire", "Status": "Enabled", "ExpirationInDays": 15}]
    # Longer than any queue keeps the message that points at the body.
    queues = resources(stateful, "AWS::SQS::Queue").values()
    assert max(q["Properties"]["MessageRetentionPeriod"] for q in queues) < 15 * 86400


def test_tables_use_the_local_stack_key_schema(stateful: dict[str, Any]) -> None:
    tables = resources(stateful, "AWS::DynamoDB::Table")
    assert set(tables) == {"SuppressionTable", "SendersTable", "FinalsTable", "ControlsTable",
                           "TenantKeysTable", "IdempotencyTable"}
    for logical_id, table in tables.items():
        props = table["Properties"]
        assert props["KeySchema"] == [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ], logical_id
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["SSESpecification"] == {"SSEEnabled": True}
        assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_suppression_list_is_backed_up_and_protected(stateful: dict[str, Any]) -> None:
    props = stateful["Resources"]["SuppressionTable"]["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True


def test_operator_controls_are_backed_up_and_protected(stateful: dict[str, Any]) -> None:
    # A stop or a pause lost with the table would resume sending nobody asked for.
    props = stateful["Resources"]["ControlsTable"]["Properties"]
    names = resource_names(account="${AWS::AccountId}", region="${AWS::Region}")
    assert props["TableName"] == names.controls_table
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_final_event_claims_outlive_every_redelivery(stateful: dict[str, Any]) -> None:
    # A claim that expired while its message could still come back would let the
    # redelivered copy's final event through a second time.
    queues = resources(stateful, "AWS::SQS::Queue").values()
    assert max(q["Properties"]["MessageRetentionPeriod"] for q in queues) < FINALS_TTL_SECONDS
    assert FINALS_TTL_SECONDS == 15 * 86400


def test_final_event_claims_are_not_backed_up(stateful: dict[str, Any]) -> None:
    # Claims expire within 15 days; losing them costs duplicate events, never mail,
    # and at one item per final event, backups would bill for a very large table.
    props = stateful["Resources"]["FinalsTable"]["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is False


def test_tenant_keys_are_backed_up_and_protected(stateful: dict[str, Any]) -> None:
    props = stateful["Resources"]["TenantKeysTable"]["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    assert props["TableName"] == resource_names(account="a", region="r").tenant_keys_table
