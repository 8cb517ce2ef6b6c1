"""Deployment settings: where the queues, buckets and table are.

Read once, at the edge (CLI, Lambda handler), from environment variables that the
CDK app sets on the task definition and functions. Nothing deeper reads the
environment. Endpoints (AWS_ENDPOINT_URL, AWS_REGION, ...) stay with boto3's own
standard variables so the same code runs against AWS and the local stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quiver.names import resource_names

# The environment variables the CDK app sets; names are part of the deploy contract.
ENV_OUTBOUND_QUEUE_URL = "QUIVER_OUTBOUND_QUEUE_URL"
ENV_OUTBOUND_DLQ_URL = "QUIVER_OUTBOUND_DLQ_URL"
ENV_EVENTS_QUEUE_URL = "QUIVER_EVENTS_QUEUE_URL"
ENV_SPILL_BUCKET = "QUIVER_SPILL_BUCKET"
ENV_EVENTS_BUCKET = "QUIVER_EVENTS_BUCKET"
ENV_SUPPRESSION_TABLE = "QUIVER_SUPPRESSION_TABLE"
ENV_SENDERS_TABLE = "QUIVER_SENDERS_TABLE"
ENV_FINALS_TABLE = "QUIVER_FINALS_TABLE"
ENV_CONTROLS_TABLE = "QUIVER_CONTROLS_TABLE"
# Tenants' API keys (hashes only) for the ingresses (quiver/tenants/keys.py).
ENV_TENANT_KEYS_TABLE = "QUIVER_TENANT_KEYS_TABLE"
# The HTTP ingress's idempotency records, per (tenant, message id).
ENV_IDEMPOTENCY_TABLE = "QUIVER_IDEMPOTENCY_TABLE"
ENV_POLICY_PARAMETER = "QUIVER_POLICY_PARAMETER"
# Where a deployed policy is: `s3://<bucket>/<key>` (or `ssm:<name>`, a file path).
# Unset, functions read the SSM parameter ENV_POLICY_PARAMETER names.
ENV_POLICY_SOURCE = "QUIVER_POLICY_SOURCE"
# The Secrets Manager id of the return-path key ring, for functions that verify its
# tokens (the unsubscribe endpoint). Senders read it from policy; their tasks carry
# it too, for tools run there.
ENV_KEY_RING_SECRET = "QUIVER_KEY_RING_SECRET"  # noqa: S105 (a variable name)
# Where SES receipt rules store inbound mail (bounces, complaints) for the intakes.
ENV_INBOUND_BUCKET = "QUIVER_INBOUND_BUCKET"
# The Athena workgroup and Glue database over the exported events (cdk/event_analytics.py);
# set, `quiver trace` queries them instead of listing the events bucket.
ENV_ATHENA_WORKGROUP = "QUIVER_ATHENA_WORKGROUP"
ENV_ATHENA_DATABASE = "QUIVER_ATHENA_DATABASE"
# The outbound queue's redrive maxReceiveCount, set by the CDK app from the value it
# gives the queue, so the sender gives a message up (`failed`) before SQS moves it.
ENV_OUTBOUND_MAX_RECEIVES = "QUIVER_OUTBOUND_MAX_RECEIVES"
# Below this there is no receive left to deliver on before giving up (max - 1).
MIN_OUTBOUND_MAX_RECEIVES = 3


@dataclass(frozen=True, slots=True)
class Deployment:
    outbound_queue_url: str
    outbound_dlq_url: str
    events_queue_url: str
    spill_bucket: str
    events_bucket: str
    suppression_table: str
    policy_parameter: str
    region: str
    # Heartbeats of live sender tasks; empty: this task assumes it is alone.
    senders_table: str = ""
    # Final events already exported, per (message id, recipient); empty: final
    # events are at-least-once across sender crashes instead of exactly-once.
    finals_table: str = ""
    # The outbound queue's maxReceiveCount; 0: unknown, and a message SQS moves to
    # the DLQ after repeated crashes gets no `failed` events.
    outbound_max_receives: int = 0
    # The return-path key ring's secret id; empty: not set (only functions need it).
    key_ring_secret: str = ""
    # Raw inbound mail (SES receipt rules write it); the intakes read only from here.
    inbound_bucket: str = ""
    # Athena over the events bucket, for tools (`quiver trace`); empty: not configured.
    athena_workgroup: str = ""
    athena_database: str = ""
    # Operator controls (pause, admin bounce, stop); empty: this task sees none, and
    # `quiver ctl` cannot reach it (a tool's sender; deployed, the CDK app sets it).
    controls_table: str = ""
    # The policy's source spec (`s3://...`); empty: the SSM parameter `policy_parameter`.
    policy_source: str = ""
    # Tenants' API keys; empty: no key verifies (the ingresses refuse every key).
    tenant_keys_table: str = ""
    # The HTTP ingress's idempotency records; the ingress cannot run without it.
    idempotency_table: str = ""

    @property
    def policy_spec(self) -> str:
        """What `quiver.policy.source` reads the deployed policy from."""
        return self.policy_source or f"ssm:{self.policy_parameter}"


class SettingsError(ValueError):
    pass


# What a sender (and the CLI) cannot run without.
SENDER_VARIABLES = (
    ENV_OUTBOUND_QUEUE_URL,
    ENV_OUTBOUND_DLQ_URL,
    ENV_EVENTS_QUEUE_URL,
    ENV_SPILL_BUCKET,
    ENV_EVENTS_BUCKET,
)
# What the event-export Lambda cannot run without (cdk/event_export.py sets these).
EXPORT_VARIABLES = (ENV_EVENTS_BUCKET,)
# What the unsubscribe endpoint cannot run without (cdk/unsubscribe.py sets these).
UNSUBSCRIBE_VARIABLES = (ENV_EVENTS_QUEUE_URL, ENV_SUPPRESSION_TABLE, ENV_KEY_RING_SECRET)
# What the bounce and FBL intake Lambdas cannot run without (cdk/inbound_mail.py):
# the events queue they publish to, the suppression table they write, the finals
# table holding the return-path references they verify, the policy (bounce domains,
# key ring, feedback trust) and the bucket the mail is in.
INTAKE_VARIABLES = (
    ENV_EVENTS_QUEUE_URL,
    ENV_SUPPRESSION_TABLE,
    ENV_FINALS_TABLE,
    ENV_POLICY_SOURCE,
    ENV_INBOUND_BUCKET,
)


def deployment_from_env(
    env: Mapping[str, str], *, required: tuple[str, ...] = SENDER_VARIABLES
) -> Deployment:
    """Build settings from the environment, naming every missing variable of
    `required` at once; the others are empty when unset."""
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise SettingsError(
            "missing environment variables: " + ", ".join(missing)
            + " (the CDK app sets them on the task; `quiver local` prints them)"
        )
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    max_receives = _max_receives(env.get(ENV_OUTBOUND_MAX_RECEIVES, ""))
    return Deployment(
        outbound_queue_url=env.get(ENV_OUTBOUND_QUEUE_URL, ""),
        outbound_dlq_url=env.get(ENV_OUTBOUND_DLQ_URL, ""),
        events_queue_url=env.get(ENV_EVENTS_QUEUE_URL, ""),
        spill_bucket=env.get(ENV_SPILL_BUCKET, ""),
        events_bucket=env.get(ENV_EVENTS_BUCKET, ""),
        suppression_table=env.get(ENV_SUPPRESSION_TABLE, ""),
        policy_parameter=env.get(ENV_POLICY_PARAMETER, ""),
        region=region,
        senders_table=env.get(ENV_SENDERS_TABLE, ""),
        finals_table=env.get(ENV_FINALS_TABLE, ""),
        outbound_max_receives=max_receives,
        key_ring_secret=env.get(ENV_KEY_RING_SECRET, ""),
        inbound_bucket=env.get(ENV_INBOUND_BUCKET, ""),
        athena_workgroup=env.get(ENV_ATHENA_WORKGROUP, ""),
        athena_database=env.get(ENV_ATHENA_DATABASE, ""),
        controls_table=env.get(ENV_CONTROLS_TABLE, ""),
        policy_source=env.get(ENV_POLICY_SOURCE, ""),
        tenant_keys_table=env.get(ENV_TENANT_KEYS_TABLE, ""),
        idempotency_table=env.get(ENV_IDEMPOTENCY_TABLE, ""),
    )


def _max_receives(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit() or int(text) < MIN_OUTBOUND_MAX_RECEIVES:
        raise SettingsError(
            f"{ENV_OUTBOUND_MAX_RECEIVES}: expected the outbound queue's maxReceiveCount, "
            f"an integer of at least {MIN_OUTBOUND_MAX_RECEIVES}, got {text!r}"
        )
    return int(text)


def local_deployment(
    *, endpoint: str, account: str, region: str, outbound_max_receives: int = 0
) -> Deployment:
    """Settings for the embedded local stack (moto's server at `endpoint`)."""
    names = resource_names(account=account, region=region)

    def queue_url(name: str) -> str:
        return f"{endpoint}/{account}/{name}"

    return Deployment(
        outbound_queue_url=queue_url(names.outbound_queue),
        outbound_dlq_url=queue_url(names.outbound_dlq),
        events_queue_url=queue_url(names.events_queue),
        spill_bucket=names.spill_bucket,
        events_bucket=names.events_bucket,
        suppression_table=names.suppression_table,
        policy_parameter=names.policy_parameter,
        # The local stack publishes its policy as an SSM parameter (a small policy).
        policy_source=f"ssm:{names.policy_parameter}",
        region=region,
        senders_table=names.senders_table,
        finals_table=names.finals_table,
        outbound_max_receives=outbound_max_receives,
        inbound_bucket=names.inbound_bucket,
        controls_table=names.controls_table,
        tenant_keys_table=names.tenant_keys_table,
        idempotency_table=names.idempotency_table,
    )


def deployment_env(deployment: Deployment) -> dict[str, str]:
    """The inverse of deployment_from_env: what to export for a child process."""
    return {
        ENV_OUTBOUND_QUEUE_URL: deployment.outbound_queue_url,
        ENV_OUTBOUND_DLQ_URL: deployment.outbound_dlq_url,
        ENV_EVENTS_QUEUE_URL: deployment.events_queue_url,
        ENV_SPILL_BUCKET: deployment.spill_bucket,
        ENV_EVENTS_BUCKET: deployment.events_bucket,
        ENV_SUPPRESSION_TABLE: deployment.suppression_table,
        ENV_POLICY_PARAMETER: deployment.policy_parameter,
        ENV_SENDERS_TABLE: deployment.senders_table,
        ENV_FINALS_TABLE: deployment.finals_table,
        ENV_OUTBOUND_MAX_RECEIVES: str(deployment.outbound_max_receives or ""),
        ENV_KEY_RING_SECRET: deployment.key_ring_secret,
        ENV_INBOUND_BUCKET: deployment.inbound_bucket,
        ENV_ATHENA_WORKGROUP: deployment.athena_workgroup,
        ENV_ATHENA_DATABASE: deployment.athena_database,
        ENV_CONTROLS_TABLE: deployment.controls_table,
        ENV_TENANT_KEYS_TABLE: deployment.tenant_keys_table,
        ENV_IDEMPOTENCY_TABLE: deployment.idempotency_table,
        ENV_POLICY_SOURCE: deployment.policy_source,
        "AWS_REGION": deployment.region,
    }
