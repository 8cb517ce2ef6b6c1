"""The one-click unsubscribe endpoint in the deployed stack: a function URL without
auth (one-click POSTs carry no credentials; the signed token is the authority), a
throttle, and a role that writes suppressions, sends events and reads the one key
ring secret. The senders may read the ring when the policy adds unsubscribe headers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from infra_helpers import (
    CFN_LINT_CONFIG,
    POLICY_PATH,
    ROOT,
    build,
    only,
    output_source,
    render,
    resources,
)
from test_cli_synth import cfn_lint
from test_events import RUNTIME_PACKAGES
from test_iam import role_of, role_statements

from cdk.unsubscribe import RESERVED_CONCURRENCY
from quiver.settings import ENV_EVENTS_QUEUE_URL, ENV_KEY_RING_SECRET, ENV_SUPPRESSION_TABLE

SECTION = """
[return_path]
key_secret = "quiver/return-path/keys"

[[unsubscribe.domains]]
from = "example.com"
url = "https://unsubscribe.example.com/u/"
"""


@pytest.fixture(scope="module")
def unsub_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any],
                                                            Path]:
    tmp = tmp_path_factory.mktemp("unsubscribe")
    policy = tmp / "policy.toml"
    policy.write_text(POLICY_PATH.read_text() + SECTION)
    outdir = tmp / "out"
    stacks = build(policy, outdir)
    return (Template.from_stack(stacks.service).to_json(),
            Template.from_stack(stacks.stateful).to_json(), outdir)


def unsubscribe_function(service: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = {k: r for k, r in resources(service, "AWS::Lambda::Function").items()
             if r["Properties"]["Handler"] == "functions.unsubscribe.handler.handler"}
    assert len(found) == 1, sorted(found)
    ((logical_id, resource),) = found.items()
    return logical_id, resource["Properties"]


def test_the_function_url_has_no_auth_and_the_function_is_throttled(unsub_synth) -> None:
    service, _, _ = unsub_synth
    function_id, props = unsubscribe_function(service)
    _, url = only(service, "AWS::Lambda::Url")
    assert url["AuthType"] == "NONE"
    assert url["TargetFunctionArn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert "Cors" not in url  # pages post to themselves; no other origin may
    assert props["ReservedConcurrentExecutions"] == RESERVED_CONCURRENCY
    env = props["Environment"]["Variables"]
    assert env[ENV_KEY_RING_SECRET] == "quiver/return-path/keys"
    assert set(env) >= {ENV_EVENTS_QUEUE_URL, ENV_SUPPRESSION_TABLE}
    (permission,) = [p["Properties"] for p in resources(service, "AWS::Lambda::Permission")
                     .values() if p["Properties"].get("FunctionUrlAuthType") == "NONE"]
    assert permission["Action"] == "lambda:InvokeFunctionUrl"
    assert any("Url" in k for k in service["Outputs"])


def test_the_role_writes_suppressions_sends_events_and_reads_one_secret(unsub_synth) -> None:
    service, stateful, _ = unsub_synth
    _, props = unsubscribe_function(service)
    role = props["Role"]["Fn::GetAtt"][0]
    granted = {s["Sid"]: s for s in role_statements(service, role)}
    assert set(granted) == {"SuppressUnsubscribed", "SendUnsubscribedEvents", "ReadKeyRing"}
    suppress = granted["SuppressUnsubscribed"]
    assert sorted(suppress["Action"]) == ["dynamodb:DeleteItem", "dynamodb:PutItem"]
    assert output_source(stateful, suppress["Resource"]) == {
        "Fn::GetAtt": ["SuppressionTable", "Arn"]}
    events = granted["SendUnsubscribedEvents"]
    assert events["Action"] == "sqs:SendMessage"
    assert output_source(stateful, events["Resource"]) == {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    keys = granted["ReadKeyRing"]
    assert keys["Action"] == "secretsmanager:GetSecretValue"
    # One secret: Secrets Manager appends "-" and six random characters to its name.
    assert str(render(keys["Resource"])).endswith(":secret:quiver/return-path/keys-??????")


def test_senders_read_the_ring_when_only_unsubscribe_needs_it(unsub_synth) -> None:
    service, _, _ = unsub_synth
    granted = {s["Sid"]: s for s in role_statements(service, role_of(service, "TaskRoleArn"))}
    assert "ReturnPathReferences" not in granted  # no bounce domains: nothing to store
    assert str(render(granted["ReadReturnPathKeys"]["Resource"])).endswith(
        ":secret:quiver/return-path/*")


def test_without_a_key_ring_there_is_no_endpoint(service: dict[str, Any]) -> None:
    assert not resources(service, "AWS::Lambda::Url")


def test_cfn_lint_reports_nothing(unsub_synth) -> None:
    _, _, outdir = unsub_synth
    templates = sorted(str(p) for p in outdir.glob("*.template.json"))
    assert templates
    result = subprocess.run(
        [cfn_lint(), "--config-file", str(CFN_LINT_CONFIG), "--", *templates],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_packaged_handler_imports_with_only_what_lambda_provides(
        unsub_synth, tmp_path: Path) -> None:
    service, _, outdir = unsub_synth
    site = tmp_path / "runtime"
    site.mkdir()
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"{name} is not installed here"
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (site / source.name).symlink_to(source)
    function_id, _ = unsubscribe_function(service)
    manifest = json.loads((outdir / "QuiverService.assets.json").read_text())
    key = service["Resources"][function_id]["Properties"]["Code"]["S3Key"]
    (asset,) = [a for a in manifest["files"].values()
                if any(d["objectKey"] == key for d in a["destinations"].values())]
    root = outdir / asset["source"]["path"]
    # -S: no site-packages, so dkimpy, dnspython, cryptography ... are all missing.
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import sys; sys.path[:0] = sys.argv[1:]; "
         "import functions.unsubscribe.handler as h; assert callable(h.handler)",
         str(root), str(site)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "test"},
    )
    assert result.returncode == 0, result.stderr
