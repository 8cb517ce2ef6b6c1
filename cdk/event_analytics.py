"""Glue table and Athena workgroup over the exported events.

Partition projection computes partitions from the key layout
`events/event=<type>/date=YYYY-MM-DD/hour=HH/` at query time, so no crawler or
MSCK REPAIR ever runs and new hours are queryable at once. The record's own `event`
field is the `event` partition column (Athena forbids a column with the same name
as a partition key; the values are identical by construction of the key).
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import ATHENA_RESULTS_PREFIX, EVENTS_PREFIX
from quiver.events import EVENT_FIELDS, EVENT_TYPES

# Projection starts here; earlier dates hold no events and would only cost listings.
FIRST_DATE = "2025-01-01"
# A query that forgets its partition filter stops here instead of scanning every day.
BYTES_SCANNED_CUTOFF = 1024**4

# Athena types of the v1 event record's fields (quiver.events.EventRecord, the one
# schema). A field added there without a type here fails the synth.
_TYPES: dict[str, str] = {
    "v": "int", "at": "string", "id": "string", "rcpt": "string", "from": "string",
    "tenant": "string", "campaign": "string", "pool": "string",
    "meta": "map<string,string>", "attempt": "int",
    "source": "string", "source_ip": "string", "proxy": "string", "mx": "string",
    "mx_ip": "string", "site": "string", "provider": "string",
    "response": "struct<code:int,enhanced:string,text:string>", "tls": "string",
    "next_attempt_at": "string", "queued_ms": "bigint",
    "bounce": "struct<kind:string,category:string,reason:string>",
    "feedback_type": "string",
    # Post-delivery events (async_bounce, complaint, unsubscribed).
    "dsn": "struct<recipient:string,status:string,diagnostic_code:string,"
           "remote_mta:string,reporting_mta:string,format:string>",
    "reporter": "string",
    "inbound_object": "string",
    # Why a message was rejected, failed or expired (rejected, failed, expired).
    "reason": "string",
    # The SQS message id of a rejected or failed message (its DLQ copy's attribute).
    "sqs_message_id": "string",
    # Operator controls (`control` events).
    "action": "string", "actor": "string", "selector": "map<string,string>",
    "until": "string",
    # Adaptive changes (`control` events whose actor is `adaptive`).
    "rule": "string", "observed": "double", "old": "double", "new": "double",
}
# Fields that are not columns: `event` is the partition column (Athena forbids both);
# `tls_mode` and `return_path` (added in v1, optional for readers) are not columns
# yet: adding one changes the deployed table, which is a change of its own.
NOT_COLUMNS = frozenset({"event", "tls_mode", "return_path"})
COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (name, _TYPES[name]) for name in EVENT_FIELDS if name not in NOT_COLUMNS
)
PARTITION_KEYS: tuple[tuple[str, str], ...] = (
    ("event", "string"), ("date", "string"), ("hour", "string"),
)


def projection_parameters(location: str) -> dict[str, str]:
    return {
        "classification": "json",
        "compressionType": "gzip",
        "projection.enabled": "true",
        "projection.event.type": "enum",
        "projection.event.values": ",".join(EVENT_TYPES),
        "projection.date.type": "date",
        "projection.date.format": "yyyy-MM-dd",
        "projection.date.range": f"{FIRST_DATE},NOW",
        "projection.date.interval": "1",
        "projection.date.interval.unit": "DAYS",
        "projection.hour.type": "integer",
        "projection.hour.range": "0,23",
        "projection.hour.digits": "2",
        "storage.location.template": location + "event=${event}/date=${date}/hour=${hour}/",
    }


class EventAnalytics(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        events_bucket: s3.IBucket,
        results_bucket: s3.IBucket,
        database_name: str,
        workgroup_name: str,
        table_name: str = "events",
    ) -> None:
        super().__init__(scope, construct_id)
        self.database_name = database_name
        self.table_name = table_name
        self.workgroup_name = workgroup_name
        location = f"s3://{events_bucket.bucket_name}/{EVENTS_PREFIX}"
        database = glue.CfnDatabase(
            self, "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=database_name, description="Quiver delivery events",
            ),
        )
        table = glue.CfnTable(
            self, "EventsTable",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=table_name,
                description="Quiver event records v1 (gzip'd JSON lines), partition-projected",
                table_type="EXTERNAL_TABLE",
                parameters=projection_parameters(location),
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name=n, type=t) for n, t in PARTITION_KEYS
                ],
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=location,
                    input_format="org.apache.hadoop.mapred.TextInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library="org.openx.data.jsonserde.JsonSerDe",
                    ),
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t) for n, t in COLUMNS],
                ),
            ),
        )
        table.add_resource_dependency(database)
        self.workgroup = athena.CfnWorkGroup(
            self, "WorkGroup",
            name=workgroup_name,
            description="Quiver event analytics",
            state="ENABLED",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=BYTES_SCANNED_CUTOFF,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3",
                ),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{results_bucket.bucket_name}/{ATHENA_RESULTS_PREFIX}",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3",
                    ),
                ),
            ),
        )
