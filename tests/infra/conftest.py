"""Fixtures for the infrastructure tests: the app is synthesized once per session.

`synth` builds both stacks in-process with the context from cdk.json (so the
feature flags match `cdk synth`); `cli_synth` runs scripts/synth.sh, the CDK CLI
path operators use, into a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# cdk/ and proxy_tier/ are top-level packages of the repo, not installed ones.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _node_major() -> str:
    if not shutil.which("node"):
        return ""
    result = subprocess.run(
        ["node", "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True,
    )
    return result.stdout.strip()


# Set before aws_cdk starts its Node runtime; it only silences an end-of-life banner.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", _node_major())
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk.assertions import Template  # noqa: E402
from infra_helpers import CDK_CLI, POLICY_PATH, CliSynth, build, without_network  # noqa: E402

from cdk.stacks import QuiverStacks  # noqa: E402
from quiver.policy import Policy, load_policy  # noqa: E402


@dataclass(frozen=True)
class Synth:
    stacks: QuiverStacks
    stateful: dict[str, Any]
    service: dict[str, Any]
    outdir: Path


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(POLICY_PATH)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    outdir = tmp_path_factory.mktemp("cdk.out")
    stacks = build(POLICY_PATH, outdir)
    return Synth(
        stacks=stacks,
        stateful=Template.from_stack(stacks.stateful).to_json(),
        service=Template.from_stack(stacks.service).to_json(),
        outdir=outdir,
    )


@pytest.fixture(scope="session")
def stateful(synth: Synth) -> dict[str, Any]:
    return synth.stateful


@pytest.fixture(scope="session")
def service(synth: Synth) -> dict[str, Any]:
    return synth.service


@pytest.fixture
def policy_variant(tmp_path: Path) -> Callable[..., Path]:
    """Write the production policy with text replacements applied; return its path."""

    def make(*replacements: tuple[str, str]) -> Path:
        text = POLICY_PATH.read_text()
        for old, new in replacements:
            assert old in text, f"{old!r} is not in the policy: the test is stale"
            text = text.replace(old, new)
        path = tmp_path / "policy.toml"
        path.write_text(text)
        return path

    return make


@pytest.fixture(scope="session")
def cli_synth(tmp_path_factory: pytest.TempPathFactory) -> CliSynth:
    """Run scripts/synth.sh (the CDK CLI) into a temp dir, without network if allowed."""
    if not CDK_CLI.exists():
        pytest.skip("the CDK CLI is not installed: run `QUIVER_WITH_CDK=1 scripts/setup.sh`")
    outdir = tmp_path_factory.mktemp("cli.out")
    # A network namespace with no usable interface proves synth needs no network;
    # where none is allowed synth still runs, and the offline test says it proved less.
    prefix, online_because = without_network()
    result = subprocess.run(
        [*prefix, str(ROOT / "scripts" / "synth.sh"), str(outdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, f"synth failed:\n{result.stdout}\n{result.stderr}"
    return CliSynth(outdir=outdir, online_because=online_because)
