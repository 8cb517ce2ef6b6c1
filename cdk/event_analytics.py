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
from quiver.event_schema import PARTITION_KEYS as PARTITION_KEYS
from quiver.event_schema import glue_columns as glue_columns
from quiver.events import EVENT_TYPES

# Projection starts here; earlier dates hold no events and would only cost listings.
FIRST_DATE = "2025-01-01"
# A query that forgets its partition filter stops here instead of scanning every day.
BYTES_SCANNED_CUTOFF = 1024**4

# The table's columns and partition keys come from the event schema
# (quiver.event_schema), re-exported here for every table over the events:
# `glue_columns()` is the one list, generated from the fields docs/events.md and the
# DuckDB read are generated from, so a field added there is a column here.


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
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t)
                             for n, t in glue_columns()],
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
