"""The production policy as a versioned S3 object: what every sender and intake reads.

Chosen over AppConfig: the policy is already validated at synth (a policy that
`quiver.policy` or the deploy checks refuse never reaches the bucket), rollback is
`cdk deploy` of the previous commit or restoring a previous object version, and an
object reads the same on moto's server as on AWS, so the reader is tested over HTTP.
AppConfig's staged rollout would pace only the hot sections; the others roll the
senders through ECS, which has its own health checks and circuit breaker.

An SSM parameter (the earlier home) holds at most 8 KB, about 50 sources; an object
has no such cap. Senders poll it by ETag (`quiver.policy.source`); a new version's
live sections apply within the poll interval, and `restart_digest` (the hash of the
other sections) sits in the task definition, so a change to those rolls the senders.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from cdk.logical_ids import pin_logical_id
from cdk.nag import acknowledge
from quiver.policy import parse_policy
from quiver.policy.reload import restart_digest

POLICY_KEY = "policy/quiver.toml"
# Old versions are the policy's history (what ran when, what to restore); kept a year.
NONCURRENT_VERSION_DAYS = 365


class PolicyBucket(Construct):
    """The versioned bucket the policy is published to. Stateful (its old versions are
    the policy's history, what a rollback restores): retained, its logical ID pinned."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self, "Bucket",
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(
                noncurrent_version_expiration=Duration.days(NONCURRENT_VERSION_DAYS),
            )],
        )
        pin_logical_id(self.bucket, "PolicyBucket")
        acknowledge(self.bucket, "S1",
                    "Only deploys write here and senders read one key; the bucket's "
                    "versions are the record of what changed when, so access logs would "
                    "add cost and nothing to look at.")


class PolicyObject(Construct):
    """The repo's policy text as the object POLICY_KEY of `bucket`, validated first."""

    def __init__(
        self, scope: Construct, construct_id: str, *, bucket: s3.IBucket, policy_text: str,
        origin: str = "policy",
    ) -> None:
        super().__init__(scope, construct_id)
        parse_policy(policy_text, origin=origin)  # raises PolicyError naming every problem
        self.bucket = bucket
        # The text as it is in the repo; prune off so an upload never deletes history.
        self.deployment = s3deploy.BucketDeployment(
            self, "Deploy",
            sources=[s3deploy.Source.data(POLICY_KEY, policy_text)],
            destination_bucket=self.bucket,
            prune=False,
            retain_on_delete=True,
            content_type="application/toml",
            memory_limit=256,
        )
        self.spec = f"s3://{self.bucket.bucket_name}/{POLICY_KEY}"
        self.object_arn = self.bucket.arn_for_objects(POLICY_KEY)
        self.restart_digest = restart_digest(policy_text)

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """GetObject on the policy's key and nothing else (If-None-Match needs no more)."""
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadPolicy", actions=["s3:GetObject"], resources=[self.object_arn],
        ))
