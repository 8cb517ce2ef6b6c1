"""The deployed policy: the repo file, validated at synth, readable by senders only."""

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
from aws_cdk import aws_ssm as ssm
from infra_helpers import POLICY_PATH, ROOT, build, only

from cdk.deploy_checks import DeploymentError
from cdk.policy_parameter import PolicyParameter, parameter_tier
from quiver.policy import PolicyError

pytestmark = pytest.mark.infra


def test_parameter_holds_exactly_the_repo_policy(service: dict[str, Any]) -> None:
    _, props = only(service, "AWS::SSM::Parameter")
    assert props["Value"] == POLICY_PATH.read_text()
    assert props["Name"] == "/quiver/policy"
    assert props["Type"] == "String"
    # The tier follows the file's size (Standard holds 4 KiB, Advanced 8 KiB).
    size = len(POLICY_PATH.read_bytes())
    assert props["Tier"] == ("Standard" if size <= 4096 else "Advanced")


def test_tier_follows_the_size() -> None:
    assert parameter_tier("x" * 4096) == ssm.ParameterTier.STANDARD
    assert parameter_tier("x" * 4097) == ssm.ParameterTier.ADVANCED
    assert parameter_tier("é" * 2049) == ssm.ParameterTier.ADVANCED  # bytes, not characters
    with pytest.raises(ValueError, match="at most 8192"):
        parameter_tier("x" * 8193)


def test_a_large_policy_uses_the_advanced_tier() -> None:
    text = POLICY_PATH.read_text() + "\n" + "# padding\n" * 300
    stack = Stack(App(), "T")
    construct = PolicyParameter(stack, "P", parameter_name="/t/policy", policy_text=text)
    assert stack.resolve(construct.parameter.node.default_child.tier) == "Advanced"  # type: ignore[union-attr]


def test_an_invalid_policy_never_becomes_a_parameter() -> None:
    stack = Stack(App(), "T")
    with pytest.raises(PolicyError, match="default_pool"):
        PolicyParameter(stack, "P", parameter_name="/t/policy",
                        policy_text=POLICY_PATH.read_text().replace(
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
