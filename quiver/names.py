"""Names of the AWS resources Quiver uses, shared by the CDK app and the local stack.

One function decides every name so that `quiver local` holds exactly the queues,
buckets and table that `cdk deploy` creates. Bucket names must be globally unique,
so they carry the account and region; queues and tables are per-account already.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "quiver"
# Where SES receipt rules store inbound mail in the inbound bucket, per kind: each
# prefix notifies its own intake queue (cdk/inbound_mail.py).
INBOUND_BOUNCE_PREFIX = "bounce/"
INBOUND_FBL_PREFIX = "fbl/"


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
    # Operator controls (`quiver ctl`): read by every sender, written by the CLI.
    controls_table: str
    # Tenants' API keys (hashes), read by the ingresses, written by `quiver keys`.
    tenant_keys_table: str
    # The HTTP ingress's (tenant, message id) records: a replayed request enqueues once.
    idempotency_table: str
    policy_parameter: str
    # The intake queues S3 notifies of new inbound mail, and their DLQs.
    bounce_queue: str
    bounce_dlq: str
    fbl_queue: str
    fbl_dlq: str
    receipt_rule_set: str


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
        controls_table=f"{prefix}-controls",
        tenant_keys_table=f"{prefix}-tenant-keys",
        idempotency_table=f"{prefix}-ingress-idempotency",
        policy_parameter=f"/{prefix}/policy",
        bounce_queue=f"{prefix}-bounce-intake",
        bounce_dlq=f"{prefix}-bounce-intake-dlq",
        fbl_queue=f"{prefix}-fbl-intake",
        fbl_dlq=f"{prefix}-fbl-intake-dlq",
        receipt_rule_set=f"{prefix}-inbound",
    )
