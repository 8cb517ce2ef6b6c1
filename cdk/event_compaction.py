"""The hourly compaction of the exported events (quiver/analytics/compaction.py): its
Lambda on an EventBridge schedule, the DuckDB layer it writes Parquet with, and the
compacted Glue table beside the raw one.

DuckDB comes as a layer built from a pinned wheel (cdk/duckdb-layer.lock) by
scripts/setup.sh into LAYER_DIR, so the synth packages files already on disk and
downloads nothing. Measured for the lock's version (arm64, Python 3.14): 64 MB
unzipped, 22 MB zipped, well inside Lambda's 250 MB for a function and its layers;
pyarrow 26 (157 MB unzipped) would also fit, but leaves little room for anything
else and DuckDB also reads the gzip'd JSON lines itself.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.event_analytics import PARTITION_KEYS, EventAnalytics, glue_columns, projection_parameters
from cdk.event_export import (
    ARCHITECTURE,
    METRICS_NAMESPACE,
    POWERTOOLS_LAYER_VERSION,
    RUNTIME,
    powertools_layer,
    quiver_function,
)
from cdk.nag import acknowledge, acknowledge_lambda_logging, object_wildcard
from quiver.analytics.layout import COMPACTED_PREFIX, MANIFEST_PREFIX
from quiver.export import PREFIX as RAW_PREFIX
from quiver.settings import ENV_EVENTS_BUCKET

# Where scripts/setup.sh unpacks the DuckDB wheel named in LAYER_LOCK (layer layout:
# python/duckdb/...).
LAYER_DIR = Path(".quiver-layers") / "duckdb"
LAYER_LOCK = Path("cdk") / "duckdb-layer.lock"
# At minute 20: every hour closed at least GRACE (15 min) before is compacted.
SCHEDULE_MINUTE = "20"
# One run works through a day's hours; an hour is minutes of work at fleet rates.
TIMEOUT = Duration.minutes(15)
# DuckDB's memory limit is set below the function's, leaving the rest to Python,
# boto3 and the parts being uploaded.
MEMORY_MB = 3008
DUCKDB_MEMORY = "2GB"
# Lambda gives one vCPU per 1769 MB: two at MEMORY_MB.
DUCKDB_THREADS = 2
# A part's raw input and its Parquet sit in /tmp together.
EPHEMERAL_MB = 4096
COMPACTED_TABLE = "events_compacted"


def duckdb_layer(scope: Construct, *, repo_root: Path) -> lambda_.LayerVersion:
    path = repo_root / LAYER_DIR
    if not (path / "python" / "duckdb").is_dir():
        raise FileNotFoundError(
            f"{path} holds no DuckDB layer: run `QUIVER_WITH_CDK=1 bash scripts/setup.sh`, "
            f"which builds it from {LAYER_LOCK}")
    return lambda_.LayerVersion(
        scope, "DuckDbLayer", code=lambda_.Code.from_asset(str(path)),
        compatible_runtimes=[RUNTIME], compatible_architectures=[ARCHITECTURE],
        description=f"DuckDB for the event compaction ({LAYER_LOCK.name})",
    )


def compacted_table_parameters(location: str) -> dict[str, str]:
    """The raw table's projection over the compacted layout, read as Parquet."""
    parameters = projection_parameters(location)
    del parameters["compressionType"]
    parameters["classification"] = "parquet"
    return parameters


class EventCompaction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        repo_root: Path,
        events_bucket: s3.IBucket,
        analytics: EventAnalytics,
        powertools_layer_version: int = POWERTOOLS_LAYER_VERSION,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = quiver_function(
            self, "",
            description="Quiver event compaction: closed hours of events/ -> Parquet in "
                        f"{COMPACTED_PREFIX}/",
            function="event_compaction", code_dir=code_dir,
            layer=powertools_layer(self, powertools_layer_version),
            timeout=TIMEOUT, memory_size=MEMORY_MB, log_retention=log_retention,
            # One run at a time: a second would only redo the same hours (safely).
            reserved_concurrency=1,
            environment={
                ENV_EVENTS_BUCKET: events_bucket.bucket_name,
                "QUIVER_COMPACTION_THREADS": str(DUCKDB_THREADS),
                "QUIVER_COMPACTION_MEMORY": DUCKDB_MEMORY,
                "POWERTOOLS_SERVICE_NAME": "event-compaction",
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        self.function.add_layers(duckdb_layer(self, repo_root=repo_root))
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.ephemeral_storage = lambda_.CfnFunction.EphemeralStorageProperty(
            size=EPHEMERAL_MB)
        self.schedule = events.Rule(
            self, "Schedule",
            description="Compact the closed hours of the exported events",
            schedule=events.Schedule.cron(minute=SCHEDULE_MINUTE),
            targets=[targets.LambdaFunction(self.function, retry_attempts=2,
                                            max_event_age=Duration.hours(1))],
        )
        self._grant(events_bucket)
        self.table_name = COMPACTED_TABLE
        location = f"s3://{events_bucket.bucket_name}/{COMPACTED_PREFIX}/"
        self.table = glue.CfnTable(
            self, "CompactedTable",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=analytics.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=COMPACTED_TABLE,
                description="Quiver event records v1 compacted hourly to Parquet "
                            "(hours closed and compacted; the raw table has the rest)",
                table_type="EXTERNAL_TABLE",
                parameters=compacted_table_parameters(location),
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name=n, type=t) for n, t in PARTITION_KEYS
                ],
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=location,
                    input_format="org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                    output_format=(
                        "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"),
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library=(
                            "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"),
                    ),
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t)
                             for n, t in glue_columns()],
                ),
            ),
        )
        database = analytics.node.find_child("Database")
        self.table.node.add_dependency(database)

    def _grant(self, bucket: s3.IBucket) -> None:
        raw, compacted, manifests = (f"{RAW_PREFIX}/", f"{COMPACTED_PREFIX}/",
                                     f"{MANIFEST_PREFIX}/")
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ListEventObjects", actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in (raw, compacted)]}},
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadRawEvents", actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{raw}*"), bucket.arn_for_objects(f"{manifests}*")],
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="WriteCompactedEvents", actions=["s3:PutObject", "s3:DeleteObject"],
            resources=[bucket.arn_for_objects(f"{compacted}*")],
        ))
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="WriteManifests", actions=["s3:PutObject"],
            resources=[bucket.arn_for_objects(f"{manifests}*")],
        ))
        acknowledge_lambda_logging(self.function)
        for prefix in (raw, compacted, manifests):
            acknowledge(self.function, object_wildcard(bucket, f"{prefix}*"),
                        "Event objects have generated keys (batch ids, plan digests): the "
                        "grants are per prefix of the compaction's own layout.")

