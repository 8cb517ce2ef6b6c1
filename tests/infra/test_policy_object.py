"""The deployed policy: the repo file, validated at synth, a versioned S3 object that
senders and intakes read, whose start-only sections are hashed into the task definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from infra_helpers import POLICY_PATH, ROOT, build, only, output_source, resources

from cdk.deploy_checks import DeploymentError
from cdk.policy_object import POLICY_KEY, PolicyBucket, PolicyObject
from cdk.sender_service import ENV_POLICY_RESTART_DIGEST
from quiver.policy import PolicyError
from quiver.policy.reload import restart_digest

# The largest SSM parameter (advanced tier), the policy's earlier home.
SSM_ADVANCED_MAX_BYTES = 8192

pytestmark = pytest.mark.infra


def test_the_object_holds_exactly_the_repo_policy(synth: Any) -> None:
    _, props = only(synth.service, "Custom::CDKBucketDeployment")
    assert props["Prune"] is False and props["RetainOnDelete"] is True
    (key,) = props["SourceObjectKeys"]
    # Source.data is an asset directory holding the file at its key.
    asset = synth.outdir / f"asset.{key.removesuffix('.zip')}"
    assert (asset / POLICY_KEY).read_text() == POLICY_PATH.read_text()
    assert output_source(synth.stateful, props["DestinationBucketName"]) == {
        "Ref": "PolicyBucket"}


def test_the_bucket_is_versioned_private_and_retained(stateful: dict[str, Any]) -> None:
    bucket = stateful["Resources"]["PolicyBucket"]
    props = bucket["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True}
    assert bucket["DeletionPolicy"] == "Retain"
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 365}


def test_senders_roll_only_after_the_new_policy_is_uploaded(service: dict[str, Any]) -> None:
    (deploy,) = resources(service, "Custom::CDKBucketDeployment")
    (ecs_service,) = resources(service, "AWS::ECS::Service").values()
    assert deploy in ecs_service["DependsOn"]


def restart_digest_of(path: Path, outdir: Path) -> str:
    from aws_cdk.assertions import Template

    template = Template.from_stack(build(path, outdir).service).to_json()
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    (definition,) = task["Properties"]["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in definition["Environment"]}
    return str(environment[ENV_POLICY_RESTART_DIGEST])


def test_the_task_definition_changes_with_sections_read_at_start_only(
    service: dict[str, Any], policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    (task,) = resources(service, "AWS::ECS::TaskDefinition").values()
    (definition,) = task["Properties"]["ContainerDefinitions"]
    deployed = {e["Name"]: e["Value"] for e in definition["Environment"]}
    assert deployed[ENV_POLICY_RESTART_DIGEST] == restart_digest(POLICY_PATH.read_text())
    # Live sections only: the same task definition, running senders reload them.
    live = policy_variant(("max_rate = \"300/s\"", "max_rate = \"200/s\""),
                          ('first = "5m"', 'first = "10m"'),
                          ("pipeline_next = true", "pipeline_next = false"))
    assert restart_digest_of(live, tmp_path / "live") == deployed[ENV_POLICY_RESTART_DIGEST]
    # A section read at start: a new task definition, so ECS rolls the senders.
    ehlo = policy_variant(('ehlo = "mta.mail.example.com"', 'ehlo = "mta2.mail.example.com"'))
    assert restart_digest_of(ehlo, tmp_path / "ehlo") != deployed[ENV_POLICY_RESTART_DIGEST]


def test_a_fleet_policy_over_ssms_8_kb_deploys(
    policy_variant: Callable[..., Path], tmp_path: Path,
) -> None:
    from aws_cdk.assertions import Template

    # 45 more sources on 6 more nodes: 8 each, within each node's fixed /27 and one
    # interface of the default instance type (cdk/deploy_checks.py refuses more).
    extra = []
    for k in range(6):
        third = k % 3
        extra.append(f'[proxy.nodes.fleet-{k}]\naz = "us-east-1{"abc"[third]}"\n'
                     f'address = "10.60.{third}.{32 * (1 + k // 3) + 10}"\n')
    for i in range(45):
        k, third = i // 8, (i // 8) % 3
        extra.append(f'[sources.fleet{i:02d}]\nip = "203.0.113.{10 + i}"\n'
                     f'local_ip = "10.60.{third}.{32 * (1 + k // 3) + 11 + i % 8}"\n'
                     f'node = "fleet-{k}"\nehlo = "fleet{i:02d}.mail.example.com"\n')
    path = policy_variant(("[pools.transactional]", "".join(extra) + "[pools.transactional]"),
                          ("bulk3 = 1 }", "bulk3 = 1, " + ", ".join(
                              f"fleet{i:02d} = 1" for i in range(45)) + " }"))
    assert len(path.read_bytes()) > SSM_ADVANCED_MAX_BYTES
    template = Template.from_stack(build(path, tmp_path / "out").service).to_json()
    assert not resources(template, "AWS::SSM::Parameter")
    _, props = only(template, "Custom::CDKBucketDeployment")
    (key,) = props["SourceObjectKeys"]
    assert (tmp_path / "out" / f"asset.{key.removesuffix('.zip')}" / POLICY_KEY).read_text() \
        == path.read_text()


def test_an_invalid_policy_never_becomes_an_object() -> None:
    stack = Stack(App(), "T")
    bucket = PolicyBucket(stack, "B").bucket
    with pytest.raises(PolicyError, match="default_pool"):
        PolicyObject(stack, "P", bucket=bucket, policy_text=POLICY_PATH.read_text().replace(
            'default_pool = "transactional"', 'default_pool = "nope"'))


def test_a_broken_policy_fails_synth_with_the_policy_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(POLICY_PATH.read_text().replace('cap = "4h"', 'cap = "forever"'))
    # How the CDK CLI runs the app: context and output directory in the environment.
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({"quiver:policy": str(broken)}),
        "CDK_OUTDIR": str(tmp_path / "out"),
    }
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{broken}: 1 problem(s)" in result.stderr
    assert "retry.cap: expected a duration like" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(("replacements", "message"), [
    ([('key_secret = "quiver/dkim/example.com/q2026"', 'key_file = "keys/q2026.pem"')],
     "dkim[0].key_file: deployed senders read keys from Secrets Manager"),
    ([('key_secret = "quiver/dkim/example.com/q2026"', 'key_secret = "other/q2026"')],
     "dkim[0].key_secret: senders may read only secrets named 'quiver/dkim/*'"),
    ([('ehlo = "bulk3.mail.example.com"', 'ehlo = "bulk3.mail.example.com"\naz = "us-east-1c"'),
      ('node = "egress-c"\n', '')],
     "sources.bulk3.node: deployed senders have no direct internet route"),
    ([('az = "us-east-1b"', 'az = "us-east-1a"'), ('az = "us-east-1c"', 'az = "us-east-1a"')],
     "proxy.nodes: place nodes in at least 2 AZs"),
    ([('az = "us-east-1c"', 'az = "eu-west-1c"')],
     "proxy.nodes: all nodes must be in one region, found eu-west-1, us-east-1"),
    ([("version = 1\n", "version = 1\nlocal_only = true\n")],
     "local_only: this policy is for a stack on one machine"),
])
def test_deploy_only_rules_fail_synth_with_the_key_to_fix(
    policy_variant: Callable[..., Path], tmp_path: Path,
    replacements: list[tuple[str, str]], message: str,
) -> None:
    path = policy_variant(*replacements)
    with pytest.raises(DeploymentError) as error:
        build(path, tmp_path / "out")
    assert message in str(error.value)


def test_synth_refuses_a_local_only_policy(
    policy_variant: Callable[..., Path], tmp_path: Path
) -> None:
    """What `cdk synth` runs: a policy allowing loopback (valid, as local_only) never
    becomes a template."""
    path = policy_variant(
        ("version = 1\n", "version = 1\nlocal_only = true\n"),
        ("allowed_ports = [25]\n", 'allowed_ports = [25]\nallow_networks = ["127.0.0.0/8"]\n'),
    )
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({"quiver:policy": str(path)}),
        "CDK_OUTDIR": str(tmp_path / "out"),
    }
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{path}: cannot deploy: 1 problem(s)" in result.stderr
    assert "local_only: this policy is for a stack on one machine" in result.stderr
    assert "remove local_only and every such allow_networks entry" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
