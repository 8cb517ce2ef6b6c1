"""The first deploy: dark (no sender can run), and AZ IDs instead of AZ names."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template
from infra_helpers import CFN_LINT_CONFIG, POLICY_PATH, build, only, resources
from test_cli_synth import cfn_lint

from cdk.deploy_checks import DeploymentError, check_deployable
from quiver.policy import load_policy, parse_policy

pytestmark = pytest.mark.infra

AZ_IDS = {"us-east-1a": "use1-az1", "us-east-1b": "use1-az2", "us-east-1c": "use1-az4"}


def by_id_policy_text() -> str:
    text = POLICY_PATH.read_text(encoding="utf-8")
    for name, zone_id in AZ_IDS.items():
        text = text.replace(f'az = "{name}"', f'az = "{zone_id}"')
    assert "us-east-1" not in re.sub(r"#.*", "", text)
    return text


@pytest.fixture(scope="module")
def dark_by_id(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("dark")
    policy = folder / "quiver.toml"
    policy.write_text(by_id_policy_text(), encoding="utf-8")
    outdir = folder / "cdk.out"
    stacks = build(policy, outdir, dark=True, region="us-east-1")
    assert stacks.service.region == "us-east-1"
    template = Template.from_stack(stacks.service).to_json()
    path = folder / "service.template.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    return template, path


def test_dark_runs_no_sender_and_autoscaling_cannot_start_one(
        dark_by_id: tuple[dict[str, Any], Path]) -> None:
    template, _ = dark_by_id
    _, service = only(template, "AWS::ECS::Service")
    assert service["DesiredCount"] == 0
    _, target = only(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0
    assert target["MaxCapacity"] == 0


def test_live_by_default(service: dict[str, Any]) -> None:
    _, ecs_service = only(service, "AWS::ECS::Service")
    assert ecs_service.get("DesiredCount", 1) != 0
    _, target = only(service, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] >= 2


def test_az_ids_place_subnets_by_zone_id(dark_by_id: tuple[dict[str, Any], Path]) -> None:
    template, _ = dark_by_id
    subnets = resources(template, "AWS::EC2::Subnet")
    assert len(subnets) == 6  # a proxy and a sender subnet per zone
    for subnet in subnets.values():
        properties = subnet["Properties"]
        assert "AvailabilityZone" not in properties
        assert properties["AvailabilityZoneId"] in AZ_IDS.values()
    zones = sorted(s["Properties"]["AvailabilityZoneId"] for s in subnets.values())
    assert zones == sorted([*AZ_IDS.values()] * 2)


def test_az_names_place_subnets_by_name(service: dict[str, Any]) -> None:
    for subnet in resources(service, "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["AvailabilityZone"] in AZ_IDS
        assert "AvailabilityZoneId" not in subnet["Properties"]


def test_cfn_lint_accepts_the_dark_by_id_template(
        dark_by_id: tuple[dict[str, Any], Path]) -> None:
    _, path = dark_by_id
    result = subprocess.run(
        [cfn_lint(), "--config-file", str(CFN_LINT_CONFIG), "--regions", "us-east-1",
         "--", str(path)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def check(text: str, region: str | None = None) -> Any:
    return check_deployable(parse_policy(text), dkim_secret_prefix="quiver/dkim/",
                            return_path_secret_prefix="quiver/return-path/", region=region)


def test_az_ids_need_the_region() -> None:
    with pytest.raises(DeploymentError, match="quiver:region"):
        check(by_id_policy_text())
    placement = check(by_id_policy_text(), region="us-east-1")
    assert placement.by_id and placement.region == "us-east-1"
    assert placement.availability_zones == tuple(sorted(AZ_IDS.values()))


def test_names_and_region_must_agree() -> None:
    text = POLICY_PATH.read_text(encoding="utf-8")
    assert check(text).region == "us-east-1"
    assert check(text, region="us-east-1").region == "us-east-1"
    with pytest.raises(DeploymentError, match="differs"):
        check(text, region="eu-west-1")
    with pytest.raises(DeploymentError, match="not a region name"):
        check(text, region="Virginia")


def test_mixed_and_malformed_zones_are_refused() -> None:
    text = POLICY_PATH.read_text(encoding="utf-8")
    replace = 'az = "us-east-1a"'
    with pytest.raises(DeploymentError, match="neither an AZ name"):
        check(text.replace(replace, 'az = "east-1"'), region="us-east-1")
    with pytest.raises(DeploymentError, match="not both"):
        check(text.replace(replace, 'az = "use1-az1"'), region="us-east-1")
    with pytest.raises(DeploymentError, match="one region"):
        check(by_id_policy_text().replace('"use1-az4"', '"euw1-az1"'), region="us-east-1")


def test_dark_context_flag() -> None:
    from app import dark_flag

    assert dark_flag("true") is True
    assert dark_flag("False") is False
    assert dark_flag(None) is False
    with pytest.raises(DeploymentError, match="quiver:dark"):
        dark_flag("yes")


def test_the_example_policy_still_loads() -> None:
    assert load_policy(POLICY_PATH).proxy.nodes
