"""The buckets: large-body spill, exported events, inbound mail, Athena results, and
the server access logs of the two that hold recipients' data.

All block public access, refuse plain HTTP, encrypt with SSE-S3, disable ACLs and
are retained when the stack is deleted.

Data policy. The events bucket (every delivery, bounce and complaint, each naming a
recipient) and the inbound bucket (raw bounce and complaint mail) hold personal
data, so each
- keeps object versions: an overwrite or delete, by mistake or with stolen
  credentials, can be undone for NONCURRENT_EXPIRY;
- expires what it holds after a stated retention: the policy's
  `[data] events_retention` for events (quiver/policy/data.py), INBOUND_EXPIRY for
  inbound mail; an expired object stays recoverable, as a noncurrent version, for
  NONCURRENT_EXPIRY more, and is then gone;
- logs every request to the access-logs bucket (who read which recipient's data),
  kept ACCESS_LOGS_EXPIRY.
The spill and Athena-results buckets hold copies that live days (bodies until sent,
query results), are read and written at the send rate (spill), and carry no
versioning or access logs: see the suppressions below.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.logical_ids import pin_logical_id
from cdk.nag import acknowledge
from quiver.export import PREFIX as EXPORT_PREFIX
from quiver.names import ResourceNames

# A spilled body is needed only while its queue message lives: at most 14 days in
# the outbound DLQ. One more day covers a message read at the very end of that.
SPILL_EXPIRY = Duration.days(15)
# Raw bounce and complaint mail holds recipients' personal data; the parsed result
# is kept as events. A month allows reprocessing after a parser fix.
INBOUND_EXPIRY = Duration.days(30)
ATHENA_RESULTS_EXPIRY = Duration.days(30)
# How long a replaced, deleted or expired object can still be restored. A month
# covers a mistake noticed at the next monthly report; every day longer keeps
# deleted personal data that much longer.
NONCURRENT_EXPIRY = Duration.days(30)
# Access logs answer "who read this data" for a year, the span an audit or an
# incident review looks back over. They name object keys and requesters, no content.
ACCESS_LOGS_EXPIRY = Duration.days(365)
# Where the export writes (quiver.export); the Glue table reads from here.
EVENTS_PREFIX = f"{EXPORT_PREFIX}/"
# The export's raw objects are the landing zone: the hourly compaction copies each
# closed hour into Parquet (cdk/event_compaction.py), which the events retention
# keeps. A week of raw objects leaves time to notice and fix a compaction that
# fails, and to re-run it, before an hour exists only in its compacted copy.
RAW_EVENTS_EXPIRY = Duration.days(7)
ATHENA_RESULTS_PREFIX = "athena/"
# Each logged bucket's records under its own prefix of the access-logs bucket.
ACCESS_LOG_PREFIXES = {"events": "events-bucket/", "inbound": "inbound-bucket/"}

LOGICAL_IDS = {
    "spill": "SpillBucket",
    "events": "EventsBucket",
    "inbound": "InboundBucket",
    "athena_results": "AthenaResultsBucket",
    "access_logs": "AccessLogsBucket",
}


class Buckets(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames,
                 events_retention: Duration) -> None:
        super().__init__(scope, construct_id)
        # Named by CloudFormation: only S3's log delivery writes to it. It logs
        # nothing itself: its own access logs would have to go somewhere, and into
        # itself would be a loop (every delivered log object a new request to log).
        self.access_logs = self._bucket("AccessLogsBucket", None, expiry=ACCESS_LOGS_EXPIRY)
        acknowledge(self.access_logs, "S1",
                    "The access-logs bucket itself: logging it into itself would loop, and "
                    "into another bucket only moves the question; only S3's log delivery "
                    "writes here (bucket policy) and the bucket blocks public access.")
        self.spill = self._bucket("SpillBucket", names.spill_bucket, expiry=SPILL_EXPIRY)
        acknowledge(self.spill, "S1",
                    "Spilled bodies are read and written once per large message at the send "
                    "rate and expire within 15 days; a log record per request would cost "
                    "more than the bodies. Only the senders' task role can reach them.")
        raw_expiry = Duration.days(min(RAW_EVENTS_EXPIRY.to_days(), events_retention.to_days()))
        self.events = self._bucket(
            "EventsBucket", names.events_bucket, expiry=events_retention, versioned=True,
            access_log_prefix=ACCESS_LOG_PREFIXES["events"],
            extra_rules=[s3.LifecycleRule(id="expire-raw-events", prefix=EVENTS_PREFIX,
                                          expiration=raw_expiry)],
        )
        self.inbound = self._bucket(
            "InboundBucket", names.inbound_bucket, expiry=INBOUND_EXPIRY, versioned=True,
            access_log_prefix=ACCESS_LOG_PREFIXES["inbound"],
        )
        # Named by CloudFormation: nothing outside the Athena workgroup refers to it.
        self.athena_results = self._bucket(
            "AthenaResultsBucket", None, expiry=ATHENA_RESULTS_EXPIRY,
        )
        acknowledge(self.athena_results, "S1",
                    "Query results only, written by Athena for the workgroup and expired "
                    "after 30 days; the reads that matter are of the events bucket, which "
                    "is logged. Athena's own query history names who ran what.")
        for attr, logical_id in LOGICAL_IDS.items():
            pin_logical_id(getattr(self, attr), logical_id)

    def _bucket(self, construct_id: str, name: str | None, *, expiry: Duration,
                versioned: bool = False, access_log_prefix: str | None = None,
                extra_rules: list[s3.LifecycleRule] | None = None) -> s3.Bucket:
        rules = [
            s3.LifecycleRule(id="abort-incomplete-uploads",
                             abort_incomplete_multipart_upload_after=Duration.days(1)),
            s3.LifecycleRule(id="expire", expiration=expiry),
            *(extra_rules or []),
        ]
        if versioned:
            # An expired or deleted object becomes a noncurrent version behind a delete
            # marker; this removes the version after NONCURRENT_EXPIRY, then the marker.
            rules.append(s3.LifecycleRule(
                id="expire-noncurrent", noncurrent_version_expiration=NONCURRENT_EXPIRY,
                expired_object_delete_marker=True,
            ))
        return s3.Bucket(
            self, construct_id,
            bucket_name=name,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=versioned,
            lifecycle_rules=rules,
            # With ACLs disabled, CDK grants S3's log delivery by a policy on the target
            # bucket, scoped to this bucket and account (serverAccessLogsUseBucketPolicy).
            server_access_logs_bucket=self.access_logs if access_log_prefix else None,
            server_access_logs_prefix=access_log_prefix,
            removal_policy=RemovalPolicy.RETAIN,
        )
