"""The DynamoDB tables: the suppression list, live-sender heartbeats, final-event claims,
operator controls.

All use the key schema of the local stack (quiver/devstack/moto_server.py), so
the same store code runs against either: partition key `pk` (S), sort key `sk` (S),
and DynamoDB TTL on `expires_at` (epoch seconds).

Suppression items: pk = "tenant:<tenant>" ("tenant:*" for the global scope, an
entry that applies to every tenant and to messages without one), sk =
"address:<lower-cased address>", plus `reason` (hard_bounce, complaint,
unsubscribe, manual), `source` (what added it, free text), `created_at` and, for
entries that lapse, `expires_at` (lookups ignore a lapsed entry before DynamoDB's
TTL removes it). Recipients are checked in BatchGetItems of their tenant's key and
the "*" key (quiver.storage.dynamo.DynamoSuppression, quiver.suppression.check).

Sender items (quiver.storage.dynamo.DynamoMembership): pk = "senders", sk = the
ECS task id, `heartbeat`, `expires_at`. Every task counts the live tasks to take
its share of each throttle.

Final-event items (quiver.storage.dynamo.DynamoFinals): pk = "final#<message id>",
sk = "<recipient>", `batch` (the event batch id that claimed it), `event`, `at`, and
`expires_at` 15 days after the event. They make final events (delivered, bounced,
expired, suppressed, rejected) exactly-once: a sender that crashes between
publishing its events and deleting the message gets the message back and produces a
second final event for the same recipients. The export Lambda claims each final
event here (BatchGetItem, then BatchWriteItem of the unclaimed ones) and drops
copies another batch has claimed; the sender Queries a redelivered message's pk and
skips the recipients already final. The 15 days exceed SQS's 14-day maximum
retention, so a claim outlives every redelivery of its message.

Control items (quiver.storage.dynamo.DynamoControls): pk = "control", sk = the
control's id, `kind` (pause, bounce, stop), `selector` (a map of the fields it
names), `reason`, `who`, `created_at` and, for a control that lapses, `expires_at`.
Every sender Queries the one partition every `[controls] poll` (2 s): a handful of
items, read-only for the senders; only `quiver ctl` (an operator's credentials)
writes them.

Tenant key items (quiver.storage.dynamo_keys.DynamoTenantKeys), in their own table
so that no sender, which reads the controls table, sees them: pk = "key#<key id>",
sk = "key", `tenant`, `digest` (HMAC-SHA256 of the key's secret), `created_at`,
`who`, `revoked_at`. The ingresses GetItem one per login; `quiver keys` writes.

Idempotency items (quiver.ingress.idempotency): pk = "<tenant>#<message id>", sk =
"msg", the HTTP ingress's claim and then its result for one caller message, with
`expires_at` a day later. A replay within the day returns the first result.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from cdk.logical_ids import pin_logical_id
from cdk.nag import acknowledge
from quiver.names import ResourceNames

PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"

LOGICAL_IDS = {
    "suppression": "SuppressionTable", "senders": "SendersTable", "finals": "FinalsTable",
    "controls": "ControlsTable", "tenant_keys": "TenantKeysTable",
    "idempotency": "IdempotencyTable",
}


class Tables(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        # The list of who must never be mailed again: backed up, hard to delete.
        self.suppression = self._table(
            "SuppressionTable", names.suppression_table, point_in_time_recovery=True,
        )
        # Heartbeats only: every item expires within the hour; nothing to restore.
        self.senders = self._table(
            "SendersTable", names.senders_table, point_in_time_recovery=False,
        )
        # Dedup claims only: every item expires within 15 days, and losing them costs
        # at most a duplicate final event for a message redelivered meanwhile. At one
        # item per final event the table is large, and backups would bill for all of it.
        self.finals = self._table(
            "FinalsTable", names.finals_table, point_in_time_recovery=False,
        )
        # Operator controls: few items, but an emergency stop or a pause lost with
        # the table would resume sending nobody asked for. Backed up, hard to delete.
        self.controls = self._table(
            "ControlsTable", names.controls_table, point_in_time_recovery=True,
        )
        # Tenants' keys: few items, and losing them locks every tenant out until new
        # keys are made and handed out. Backed up, hard to delete.
        self.tenant_keys = self._table(
            "TenantKeysTable", names.tenant_keys_table, point_in_time_recovery=True,
        )
        # Replay records, each expiring after a day: restoring them would only let an
        # old replay be refused as one instead of enqueued again.
        self.idempotency = self._table(
            "IdempotencyTable", names.idempotency_table, point_in_time_recovery=False,
        )
        for attr, logical_id in LOGICAL_IDS.items():
            pin_logical_id(getattr(self, attr), logical_id)
        acknowledge(self.senders, "DDB3", "Heartbeats only, each expiring within the hour: "
                    "a restore would bring back senders that are gone.")
        acknowledge(self.finals, "DDB3", "Dedup claims expiring within 15 days; losing them "
                    "costs at most a duplicate final event, and backups would bill for one "
                    "item per final event.")
        acknowledge(self.idempotency, "DDB3", "Replay records expiring within a day; "
                    "losing them lets a replay older than the loss enqueue again.")

    def _table(
        self, construct_id: str, name: str, *, point_in_time_recovery: bool
    ) -> dynamodb.Table:
        return dynamodb.Table(
            self, construct_id,
            table_name=name,
            partition_key=dynamodb.Attribute(
                name=PARTITION_KEY, type=dynamodb.AttributeType.STRING,
            ),
            sort_key=dynamodb.Attribute(name=SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=point_in_time_recovery,
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            deletion_protection=point_in_time_recovery,
            removal_policy=RemovalPolicy.RETAIN,
        )
