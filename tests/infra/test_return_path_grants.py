"""Return paths in the deployed stack: the sender may write the token references and
read the key ring under the return-path prefix only when its policy signs them; a
policy that keeps its ring in a file, or elsewhere, does not deploy."""

from __future__ import annotations

from pathlib import Path

import pytest
from aws_cdk.assertions import Template
from infra_helpers import POLICY_PATH, build, output_source, render
from test_iam import role_of, role_statements

from cdk.deploy_checks import DeploymentError

SECTION = """
[return_path]
key_secret = "{secret}"
[[return_path.domains]]
from = "example.com"
bounce = "bounces.example.com"
"""


def with_section(tmp_path: Path, section: str) -> Path:
    """The production policy with `section` at its end (a table after all its keys)."""
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_PATH.read_text() + section)
    return path


def test_a_policy_that_signs_return_paths_gets_exactly_the_writes_and_the_keys(
        tmp_path: Path) -> None:
    section = SECTION.replace("{secret}", "quiver/return-path/keys")
    stacks = build(with_section(tmp_path, section), tmp_path / "out")
    service = Template.from_stack(stacks.service).to_json()
    stateful = Template.from_stack(stacks.stateful).to_json()
    granted = {s["Sid"]: s for s in role_statements(service, role_of(service, "TaskRoleArn"))}
    references = granted["ReturnPathReferences"]
    assert references["Action"] == "dynamodb:BatchWriteItem"
    assert output_source(stateful, references["Resource"]) == {
        "Fn::GetAtt": ["FinalsTable", "Arn"]}
    keys = granted["ReadReturnPathKeys"]
    assert keys["Action"] == "secretsmanager:GetSecretValue"
    assert str(render(keys["Resource"])).endswith(":secret:quiver/return-path/*")


def test_without_bounce_domains_the_sender_gets_neither(service) -> None:
    granted = {s["Sid"] for s in role_statements(service, role_of(service, "TaskRoleArn"))}
    assert not granted & {"ReturnPathReferences", "ReadReturnPathKeys"}


@pytest.mark.parametrize(("secret", "message"), [
    ("quiver/dkim/rp", "return_path.key_secret: senders may read only secrets named "
                       "'quiver/return-path/*', got 'quiver/dkim/rp'"),
])
def test_a_key_ring_outside_the_prefix_does_not_deploy(
        tmp_path: Path, secret: str, message: str) -> None:
    with pytest.raises(DeploymentError) as error:
        build(with_section(tmp_path, SECTION.replace("{secret}", secret)), tmp_path / "out")
    assert message in str(error.value)


def test_a_key_ring_in_a_file_does_not_deploy(tmp_path: Path) -> None:
    path = with_section(tmp_path, SECTION.replace('key_secret = "{secret}"',
                                                  'key_file = "keys.json"'))
    with pytest.raises(DeploymentError) as error:
        build(path, tmp_path / "out")
    assert ("return_path.key_file: deployed senders read the return-path key ring from "
            "Secrets Manager; use key_secret = 'quiver/return-path/keys'") in str(error.value)
