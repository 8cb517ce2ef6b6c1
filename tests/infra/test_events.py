"""Event export Lambda, its packaging, and the Glue/Athena analytics over its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import aws_lambda as lambda_
from infra_helpers import only, output_source, ref_target, render, resources

from cdk.event_analytics import PARTITION_KEYS, glue_columns
from cdk.policy_object import POLICY_KEY
from quiver.event_schema import FIELDS, athena_type
from quiver.events import EVENT_FIELDS, EVENT_TYPES
from quiver.export import object_key
from quiver.settings import (
    ENV_CONTROLS_TABLE,
    ENV_EVENTS_BUCKET,
    ENV_FINALS_TABLE,
    ENV_POLICY_SOURCE,
)

pytestmark = pytest.mark.infra

# What the Lambda Python runtime and the Powertools layer put on sys.path, and
# their own dependencies. Nothing else is available to the packaged handler.
RUNTIME_PACKAGES = (
    "boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six",
    "aws_lambda_powertools", "typing_extensions",
)


def export_function(service: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((logical_id, function),) = [
        (k, r["Properties"]) for k, r in resources(service, "AWS::Lambda::Function").items()
        if r["Properties"].get("Handler") == "functions.event_export.handler.handler"
    ]
    return logical_id, function


def code_dir(synth: Any, function_id: str) -> Path:
    """The staged asset directory of a Lambda function's code."""
    manifest = json.loads((synth.outdir / "QuiverService.assets.json").read_text())
    key = synth.service["Resources"][function_id]["Properties"]["Code"]["S3Key"]
    (asset,) = [a for a in manifest["files"].values()
                if any(d["objectKey"] == key for d in a["destinations"].values())]
    return synth.outdir / asset["source"]["path"]


def test_export_function_runtime_layer_and_settings(service: dict[str, Any]) -> None:
    _, function = export_function(service)
    # The newest Python runtime aws-cdk-lib offers, and the Powertools layer built for it.
    newest = max((r for r in dir(lambda_.Runtime) if r.startswith("PYTHON_3_")),
                 key=lambda r: int(r.rsplit("_", 1)[1]))
    assert function["Runtime"] == getattr(lambda_.Runtime, newest).name == "python3.14"
    assert function["Architectures"] == ["arm64"]
    (layer,) = function["Layers"]
    assert render(layer).startswith(
        "arn:aws:lambda:${AWS::Region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:"
    )
    variables = function["Environment"]["Variables"]
    assert set(variables) >= {ENV_EVENTS_BUCKET, ENV_FINALS_TABLE, ENV_CONTROLS_TABLE,
                              ENV_POLICY_SOURCE}


def test_export_reads_the_deployed_policy_and_the_controls_table(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    function_id, function = export_function(service)
    variables = function["Environment"]["Variables"]
    assert output_source(stateful, variables[ENV_CONTROLS_TABLE]) == {"Ref": "ControlsTable"}
    assert render(variables[ENV_POLICY_SOURCE]).endswith(f"/{POLICY_KEY}")
    # Deployed after the policy object, so its first invocation finds the policy.
    depends = service["Resources"][function_id].get("DependsOn", [])
    assert any(d.startswith("PolicyDeployCustomResource") for d in depends), depends


def test_export_claims_final_events_in_the_finals_table(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    _, function = export_function(service)
    variables = function["Environment"]["Variables"]
    assert output_source(stateful, variables[ENV_FINALS_TABLE]) == {"Ref": "FinalsTable"}
    assert output_source(stateful, variables[ENV_EVENTS_BUCKET]) == {"Ref": "EventsBucket"}


def test_export_reads_the_events_queue_with_partial_batch_failures(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    function_id, function = export_function(service)
    (mapping,) = [m["Properties"] for m in resources(service,
                                                      "AWS::Lambda::EventSourceMapping").values()
                  if ref_target(m["Properties"]["FunctionName"]) == function_id]
    assert output_source(stateful, mapping["EventSourceArn"]) == {
        "Fn::GetAtt": ["EventsQueue", "Arn"]
    }
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["MaximumBatchingWindowInSeconds"] > 0
    # A batch still being exported must not reappear on the queue (AWS: 6x timeout).
    visibility = stateful["Resources"]["EventsQueue"]["Properties"]["VisibilityTimeout"]
    assert visibility >= 6 * function["Timeout"] + mapping["MaximumBatchingWindowInSeconds"]


def test_code_is_the_handler_the_quiver_package_and_dnspython_only(synth: Any) -> None:
    function_id, _ = export_function(synth.service)
    root = code_dir(synth, function_id)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert "functions/event_export/handler.py" in files
    assert "quiver/events.py" in files and "quiver/export.py" in files
    assert "quiver/guards/guard.py" in files
    # dnspython, for the policy the guards read (cdk/event_export.py EXPORT_VENDORED).
    assert {f.split("/")[0] for f in files} == {"functions", "quiver", "dns"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_packaged_handler_imports_with_only_what_lambda_provides(
    synth: Any, tmp_path: Path
) -> None:
    import importlib.util

    site = tmp_path / "runtime"
    site.mkdir()
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"{name} is not installed here"
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (site / source.name).symlink_to(source)
    function_id, _ = export_function(synth.service)
    root = code_dir(synth, function_id)
    # -S: no site-packages, so dkimpy, aiosmtplib ... are all missing (dnspython
    # is packaged with the code).
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path[:0] = sys.argv[1:]; "
         "import functions.event_export.handler as h; assert callable(h.handler)",
         str(root), str(site)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "test"},
    )
    assert result.returncode == 0, result.stderr


def glue_table(service: dict[str, Any]) -> dict[str, Any]:
    """The raw events' table (the compacted one: tests/infra/test_event_compaction.py)."""
    (table,) = [t for k, t in resources(service, "AWS::Glue::Table").items()
                if k.startswith("EventAnalytics")]
    table_input: dict[str, Any] = table["Properties"]["TableInput"]
    return table_input


def test_glue_table_projects_event_date_and_hour(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    table = glue_table(service)
    assert [k["Name"] for k in table["PartitionKeys"]] == ["event", "date", "hour"]
    params = table["Parameters"]
    assert params["projection.enabled"] == "true"
    assert params["projection.event.type"] == "enum"
    assert params["projection.event.values"].split(",") == list(EVENT_TYPES)
    assert params["projection.date.type"] == "date"
    assert params["projection.date.format"] == "yyyy-MM-dd"
    assert params["projection.hour.type"] == "integer"
    assert params["projection.hour.range"] == "0,23"
    assert params["projection.hour.digits"] == "2"
    location = table["StorageDescriptor"]["Location"]
    scheme, bucket, suffix = location["Fn::Join"][1]
    assert scheme == "s3://"
    assert output_source(stateful, bucket) == {"Ref": "EventsBucket"}
    assert suffix == "/events/"
    serde = table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
    assert serde == "org.openx.data.jsonserde.JsonSerDe"


def test_projection_template_matches_the_export_keys(service: dict[str, Any]) -> None:
    template = str(render(glue_table(service)["Parameters"]["storage.location.template"]))
    prefix = template.split("/events/", 1)[0] + "/"
    for event in EVENT_TYPES:
        key = object_key(event=event, at="2026-11-26T07:05:00.123Z", batch_id="b1")
        expected = template.replace("${event}", event).replace("${date}", "2026-11-26").replace(
            "${hour}", "07")
        assert prefix + key.rsplit("/", 1)[0] + "/" == expected


def test_columns_are_generated_from_the_event_schema(service: dict[str, Any]) -> None:
    table = glue_table(service)
    columns = [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]]
    partitions = [(k["Name"], k["Type"]) for k in table["PartitionKeys"]]
    assert columns == list(glue_columns())
    assert partitions == list(PARTITION_KEYS)
    # Every field of the schema is a column, or the partition key of the same name
    # (`event`), with the schema's type: nothing is left out, as `reason` once was.
    types = dict(columns) | dict(partitions)
    assert [f.name for f in FIELDS] == [n for n in EVENT_FIELDS]
    assert {f.name: athena_type(f.type) for f in FIELDS} == {
        f.name: types[f.name] for f in FIELDS}
    assert {"reason", "sqs_message_id", "tls_mode", "return_path", "message_size",
            "dkim_domain", "dkim_selector", "message_id_header", "transaction_ms"} <= types.keys()
    assert types["meta"] == "map<string,string>"


def test_athena_workgroup_writes_results_to_its_bucket(
    service: dict[str, Any], stateful: dict[str, Any]
) -> None:
    _, workgroup = only(service, "AWS::Athena::WorkGroup")
    config = workgroup["WorkGroupConfiguration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    result = config["ResultConfiguration"]
    assert result["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    scheme, bucket, suffix = result["OutputLocation"]["Fn::Join"][1]
    assert scheme == "s3://"
    assert output_source(stateful, bucket) == {"Ref": "AthenaResultsBucket"}
    assert suffix == "/athena/"
