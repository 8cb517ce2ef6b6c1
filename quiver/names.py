"""Names of the AWS resources Quiver uses, shared by the CDK app and the local stack.

One function decides every name so that `quiver local` holds exactly the queues,
buckets and table that `cdk deploy` creates. Bucket names must be globally unique,
so they carry the account and region; queues and tables are per-account already.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "quiver"


@dataclass(frozen=True, slots=True)
class ResourceNames:
    outbound_queue: str
    outbound_dlq: str
    events_queue: str
    events_dlq: str
    spill_bucket: str
    events_bucket: str
    inbound_bucket: str
    suppression_table: str
    senders_table: str
    finals_table: str
    policy_parameter: str


def resource_names(*, account: str, region: str, prefix: str = DEFAULT_PREFIX) -> ResourceNames:
    """Every resource name for one deployment. `account`/`region` may be CDK tokens."""
    suffix = f"{account}-{region}"
    return ResourceNames(
        outbound_queue=f"{prefix}-outbound",
        outbound_dlq=f"{prefix}-outbound-dlq",
        events_queue=f"{prefix}-events",
        events_dlq=f"{prefix}-events-dlq",
        spill_bucket=f"{prefix}-spill-{suffix}",
        events_bucket=f"{prefix}-events-{suffix}",
        inbound_bucket=f"{prefix}-inbound-{suffix}",
        suppression_table=f"{prefix}-suppression",
        senders_table=f"{prefix}-senders",
        finals_table=f"{prefix}-finals",
        policy_parameter=f"/{prefix}/policy",
    )
