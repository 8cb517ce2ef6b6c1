"""The buckets: large-body spill, exported events, inbound mail, Athena results.

All block public access, refuse plain HTTP, encrypt with SSE-S3, disable ACLs and
are retained when the stack is deleted.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.logical_ids import pin_logical_id
from quiver.export import PREFIX as EXPORT_PREFIX
from quiver.names import ResourceNames

# A spilled body is needed only while its queue message lives: at most 14 days in
# the outbound DLQ. One more day covers a message read at the very end of that.
SPILL_EXPIRY = Duration.days(15)
# Raw bounce and complaint mail holds recipients' personal data; the parsed result
# is kept as events. A month allows reprocessing after a parser fix.
INBOUND_EXPIRY = Duration.days(30)
ATHENA_RESULTS_EXPIRY = Duration.days(30)
# Where the export writes (quiver.export); the Glue table reads from here.
EVENTS_PREFIX = f"{EXPORT_PREFIX}/"
ATHENA_RESULTS_PREFIX = "athena/"

LOGICAL_IDS = {
    "spill": "SpillBucket",
    "events": "EventsBucket",
    "inbound": "InboundBucket",
    "athena_results": "AthenaResultsBucket",
}


class Buckets(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        self.spill = self._bucket("SpillBucket", names.spill_bucket, expiry=SPILL_EXPIRY)
        self.events = self._bucket("EventsBucket", names.events_bucket, expiry=None)
        self.inbound = self._bucket("InboundBucket", names.inbound_bucket, expiry=INBOUND_EXPIRY)
        # Named by CloudFormation: nothing outside the Athena workgroup refers to it.
        self.athena_results = self._bucket(
            "AthenaResultsBucket", None, expiry=ATHENA_RESULTS_EXPIRY,
        )
        for attr, logical_id in LOGICAL_IDS.items():
            pin_logical_id(getattr(self, attr), logical_id)

    def _bucket(self, construct_id: str, name: str | None, *, expiry: Duration | None) -> s3.Bucket:
        rules = [s3.LifecycleRule(id="abort-incomplete-uploads",
                                  abort_incomplete_multipart_upload_after=Duration.days(1))]
        if expiry is not None:
            rules.append(s3.LifecycleRule(id="expire", expiration=expiry))
        return s3.Bucket(
            self, construct_id,
            bucket_name=name,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=rules,
            removal_policy=RemovalPolicy.RETAIN,
        )
