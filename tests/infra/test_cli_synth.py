"""`cdk synth` through the pinned CLI, offline, and cfn-lint on what it produces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from infra_helpers import CFN_LINT_CONFIG, ROOT, CliSynth

pytestmark = pytest.mark.infra

STACKS = ("QuiverStateful", "QuiverService", "QuiverIngress")


def template(outdir: Path, stack: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((outdir / f"{stack}.template.json").read_text())
    return data


def cfn_lint() -> str:
    beside = Path(sys.executable).with_name("cfn-lint")
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is missing: it is in the dev extra (scripts/setup.sh installs it)"
    return found


def test_cli_synthesizes_both_stacks_offline(cli_synth: CliSynth) -> None:
    if cli_synth.online_because:
        pytest.skip(f"cannot prove synth needs no network: {cli_synth.online_because}")
    manifest = json.loads((cli_synth.outdir / "manifest.json").read_text())
    stacks = {k for k, a in manifest["artifacts"].items()
              if a["type"] == "aws:cloudformation:stack"}
    assert stacks == set(STACKS)
    for stack in STACKS:
        artifact = manifest["artifacts"][stack]
        # Account-agnostic, region-pinned: deployable with any credentials, no lookups.
        assert artifact["environment"] == "aws://unknown-account/us-east-1"


def without_paths(resources: dict[str, Any]) -> dict[str, Any]:
    """Drop the construct-path metadata the CLI adds (not part of the deployment)."""
    stripped = {}
    for logical_id, resource in resources.items():
        resource = dict(resource)
        metadata = {k: v for k, v in resource.pop("Metadata", {}).items() if k != "aws:cdk:path"}
        if metadata:
            resource["Metadata"] = metadata
        stripped[logical_id] = resource
    return stripped


def test_cli_templates_match_the_in_process_synth(cli_synth: CliSynth, synth: Any) -> None:
    for stack, in_process in (("QuiverStateful", synth.stateful),
                              ("QuiverService", synth.service)):
        assert set(template(cli_synth.outdir, stack)["Resources"]) == set(
            in_process["Resources"])
    # The stateful template is identical: what the tests check is what gets deployed.
    cli_stateful = template(cli_synth.outdir, "QuiverStateful")["Resources"]
    assert without_paths(cli_stateful) == without_paths(synth.stateful["Resources"])


def test_no_version_reporting_or_asset_metadata(cli_synth: CliSynth) -> None:
    for stack in STACKS:
        resources = template(cli_synth.outdir, stack)["Resources"]
        assert not [r for r in resources.values() if r["Type"] == "AWS::CDK::Metadata"]
        assert not [r for r in resources.values()
                    if any(k.startswith("aws:asset:") for k in r.get("Metadata", {}))]


def test_cfn_lint_reports_nothing(cli_synth: CliSynth) -> None:
    templates = sorted(str(p) for p in cli_synth.outdir.glob("*.template.json"))
    assert len(templates) == len(STACKS)
    result = subprocess.run(
        [cfn_lint(), "--config-file", str(CFN_LINT_CONFIG), "--", *templates],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    # Exit status is a bit mask: 2 errors, 4 warnings, 8 informational.
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_ignores_only_justified_rules() -> None:
    lines = CFN_LINT_CONFIG.read_text().splitlines()
    ignored = [line.strip()[2:] for line in lines if line.strip().startswith("- ")]
    assert ignored == ["W3010", "W3005"]
    for rule in ignored:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[index - 1].strip().startswith("#"), f"{rule} has no reason above it"
