"""The event compaction's infrastructure: its Lambda, DuckDB layer and hourly
schedule, the raw objects' lifecycle expiry, the compacted Glue table beside the raw
one, and the saved queries as Athena named queries."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import ROOT, output_source, render, resources, statements
from test_events import RUNTIME_PACKAGES, code_dir, glue_table

from cdk.buckets import RAW_EVENTS_EXPIRY
from cdk.event_analytics import glue_columns
from cdk.event_compaction import COMPACTED_TABLE, LAYER_LOCK, SCHEDULE_MINUTE
from quiver.analytics.columns import event_columns
from quiver.analytics.saved import saved_queries

pytestmark = pytest.mark.infra

HANDLER = "functions.event_compaction.handler.handler"


def compaction_function(service: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((logical_id, function),) = [
        (k, r["Properties"]) for k, r in resources(service, "AWS::Lambda::Function").items()
        if r["Properties"].get("Handler") == HANDLER
    ]
    return logical_id, function


def layer_dir(synth: Any, key: Any) -> Path:
    """The staged asset directory of a layer's content."""
    manifest = json.loads((synth.outdir / "QuiverService.assets.json").read_text())
    (asset,) = [a for a in manifest["files"].values()
                if any(d["objectKey"] == key for d in a["destinations"].values())]
    return Path(synth.outdir) / asset["source"]["path"]


def compacted_table(service: dict[str, Any]) -> dict[str, Any]:
    (table,) = [t["Properties"]["TableInput"]
                for t in resources(service, "AWS::Glue::Table").values()
                if t["Properties"]["TableInput"]["Name"] == COMPACTED_TABLE]
    result: dict[str, Any] = table
    return result


def test_an_hourly_schedule_invokes_the_compaction(service: dict[str, Any]) -> None:
    function_id, function = compaction_function(service)
    (rule,) = [r["Properties"] for r in resources(service, "AWS::Events::Rule").values()
               if any(t["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
                      for t in r["Properties"]["Targets"])]
    assert rule["ScheduleExpression"] == f"cron({SCHEDULE_MINUTE} * * * ? *)"
    assert rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    assert target["RetryPolicy"]["MaximumRetryAttempts"] == 2
    # EventBridge may invoke it (and nothing else is granted).
    (permission,) = [p["Properties"] for p in resources(service, "AWS::Lambda::Permission").values()
                     if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}]
    assert permission["Principal"] == "events.amazonaws.com"
    assert function["Timeout"] == 900
    assert function["ReservedConcurrentExecutions"] == 1
    assert function["EphemeralStorage"]["Size"] >= 2048
    assert function["Architectures"] == ["arm64"]


def test_the_duckdb_layer_is_the_locked_wheel_unpacked(synth: Any, service: dict[str, Any]) -> None:
    _, function = compaction_function(service)
    layers = function["Layers"]
    assert len(layers) == 2
    (ref,) = [layer for layer in layers if isinstance(layer, dict) and "Ref" in layer]
    layer = service["Resources"][ref["Ref"]]
    assert layer["Type"] == "AWS::Lambda::LayerVersion"
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.14"]
    version = re.search(r"^duckdb==(\S+)", (ROOT / LAYER_LOCK).read_text(), re.M)
    assert version is not None
    root = layer_dir(synth, layer["Properties"]["Content"]["S3Key"])
    assert (root / "python" / "duckdb" / "__init__.py").is_file()
    assert (root / "python" / f"duckdb-{version.group(1)}.dist-info").is_dir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    # Lambda's limit for a function and its layers, unzipped; the layer leaves most of it.
    assert size < 100 * 1024**2


def test_packaged_compaction_imports_with_only_what_lambda_provides(
        synth: Any, service: dict[str, Any], tmp_path: Path) -> None:
    import importlib.util

    site = tmp_path / "runtime"
    site.mkdir()
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin
        origin = Path(spec.origin)
        (site / (origin.parent if origin.name == "__init__.py" else origin).name).symlink_to(
            origin.parent if origin.name == "__init__.py" else origin)
    function_id, _ = compaction_function(service)
    root = code_dir(synth, function_id)
    # The layer is arm64 (DuckDB is imported when a part is written, not at import).
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path[:0] = sys.argv[1:]; "
         "import functions.event_compaction.handler as h; assert callable(h.handler); "
         "from quiver.analytics.columns import event_columns; assert event_columns()",
         str(root), str(site)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "test"},
    )
    assert result.returncode == 0, result.stderr


def test_the_compaction_reads_raw_and_writes_only_its_own_prefixes(
        service: dict[str, Any]) -> None:
    function_id, _ = compaction_function(service)
    role = service["Resources"][function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    granted: dict[str, set[str]] = {}
    for policy_id, statement in statements(service):
        policy = service["Resources"][policy_id]["Properties"]
        if {"Ref": role} not in policy.get("Roles", []):
            continue
        for action in ([statement["Action"]] if isinstance(statement["Action"], str)
                       else statement["Action"]):
            if action.startswith("s3:"):
                resources_ = statement["Resource"]
                for r in resources_ if isinstance(resources_, list) else [resources_]:
                    text = str(render(r))
                    # "${<bucket ARN>}/<pattern>", or the bucket's ARN itself.
                    granted.setdefault(action, set()).add(
                        text.split("}/", 1)[1] if "}/" in text else "bucket")
    assert granted["s3:GetObject"] == {"events/*", "events-compaction/*"}
    assert granted["s3:DeleteObject"] == {"events-compacted/*"}
    assert granted["s3:PutObject"] == {"events-compacted/*", "events-compaction/*"}
    assert granted["s3:ListBucket"] == {"bucket"}


def test_raw_objects_expire_as_the_landing_zone(stateful: dict[str, Any]) -> None:
    rules = stateful["Resources"]["EventsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (raw,) = [r for r in rules if r.get("Prefix") == "events/"]
    assert raw["ExpirationInDays"] == RAW_EVENTS_EXPIRY.to_days()
    (whole,) = [r for r in rules if r["Id"] == "expire"]
    # The compacted copy is kept for the events retention, longer than the raw.
    assert whole["ExpirationInDays"] > raw["ExpirationInDays"]


def test_the_compacted_table_is_the_raw_one_over_parquet(
        service: dict[str, Any], stateful: dict[str, Any]) -> None:
    raw, compacted = glue_table(service), compacted_table(service)
    assert [(c["Name"], c["Type"]) for c in compacted["StorageDescriptor"]["Columns"]] == [
        (c["Name"], c["Type"]) for c in raw["StorageDescriptor"]["Columns"]] == list(glue_columns())
    # The Parquet the Lambda writes is typed by the same columns, read at run time.
    assert event_columns() == glue_columns()
    assert compacted["PartitionKeys"] == raw["PartitionKeys"]
    raw_params, params = dict(raw["Parameters"]), dict(compacted["Parameters"])
    assert params.pop("classification") == "parquet"
    assert raw_params.pop("classification") == "json"
    assert raw_params.pop("compressionType") == "gzip"
    template = params.pop("storage.location.template")
    raw_template = raw_params.pop("storage.location.template")
    assert params == raw_params
    assert str(render(template)) == str(render(raw_template)).replace(
        "/events/", "/events-compacted/")
    descriptor = compacted["StorageDescriptor"]
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == (
        "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
    assert descriptor["InputFormat"].endswith("MapredParquetInputFormat")
    _, bucket, suffix = descriptor["Location"]["Fn::Join"][1]
    assert output_source(stateful, bucket) == {"Ref": "EventsBucket"}
    assert suffix == "/events-compacted/"
    assert compacted["Name"] == COMPACTED_TABLE


def test_every_saved_query_is_a_named_query_in_the_workgroup(service: dict[str, Any]) -> None:
    (database,) = [d["Properties"]["DatabaseInput"]["Name"]
                   for d in resources(service, "AWS::Glue::Database").values()]
    (workgroup_id, workgroup), = resources(service, "AWS::Athena::WorkGroup").items()
    named = {q["Properties"]["Name"]: q
             for q in resources(service, "AWS::Athena::NamedQuery").values()}
    expected = {f"quiver-{n.replace('_', '-')}": q for n, q in saved_queries().items()}
    assert set(named) == set(expected)
    for name, query in expected.items():
        props = named[name]["Properties"]
        assert props["QueryString"] == query.text("athena")
        assert props["Database"] == database
        assert props["WorkGroup"] == workgroup["Properties"]["Name"]
        assert workgroup_id in named[name].get("DependsOn", [])
        assert props["Description"] == query.description


def test_two_failed_compaction_runs_in_a_row_page_the_alarm_topic(
        service: dict[str, Any]) -> None:
    function_id, _ = compaction_function(service)
    (alarm,) = [a["Properties"] for a in resources(service, "AWS::CloudWatch::Alarm").values()
                if a["Properties"].get("MetricName") == "Errors"
                and a["Properties"].get("Dimensions") == [
                    {"Name": "FunctionName", "Value": {"Ref": function_id}}]]
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (
        3600, 2, 2)
    assert alarm["Statistic"] == "Sum" and alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] and alarm["AlarmActions"] == alarm["OKActions"]
