"""The README's deployed-policy, image, rollback and runbook sections stay true to the
code: names, paths, numbers, and the DKIM record command runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from infra_helpers import ROOT

from cdk.deploy_checks import FARGATE_MAX_STOP_TIMEOUT_S, STOP_MARGIN_S
from cdk.policy_object import NONCURRENT_VERSION_DAYS, POLICY_KEY
from cdk.sender_service import BASE_IMAGE_FILE, CONTAINER_NAME, ENV_POLICY_RESTART_DIGEST
from proxy_tier.render import DEFAULT_STATS_SOCKET
from quiver.dkim import dns_txt_value, generate_private_key
from quiver.dkim.keyring import MAX_KEYS_PER_DOMAIN
from quiver.policy.model import Intake
from quiver.policy.reload import _LIVE
from quiver.policy.source import MAX_POLICY_BYTES

pytestmark = pytest.mark.infra

DOC = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = DOC.index(f"### {title}\n")
    return DOC[start:DOC.index("\n### ", start + 1)]


def test_the_deployed_policy_section_names_what_the_app_builds() -> None:
    text = section("The deployed policy")
    assert f"`{POLICY_KEY}`" in text and f"s3://<bucket>/{POLICY_KEY}" in text
    assert f"`{ENV_POLICY_RESTART_DIGEST}`" in text
    assert "a year of old versions" in text and NONCURRENT_VERSION_DAYS == 365
    assert MAX_POLICY_BYTES == 1024 * 1024 and "over 1 MiB" in text
    for name in _LIVE:
        assert f"`{name}`" in text
    assert "`delivery.pipeline_next`" in text


def test_images_and_rollback_name_real_files() -> None:
    text = section("Reproducible images")
    for path in (BASE_IMAGE_FILE, "scripts/pin-base-image.sh", "image/requirements.lock",
                 "scripts/lock_image.py"):
        assert path in text and (ROOT / path).exists(), path


def test_drain_numbers_match_the_policy_and_the_stop_timeout() -> None:
    drain = int(Intake().drain_deadline)
    assert drain + STOP_MARGIN_S == FARGATE_MAX_STOP_TIMEOUT_S == 120
    rollout = section("Rolling out a new sender version without losing mail")
    assert f"`intake.drain_deadline` ({drain} s" in rollout
    assert f"drain deadline\n   + {STOP_MARGIN_S} s = {FARGATE_MAX_STOP_TIMEOUT_S} s" in rollout


def test_runbooks_use_the_real_socket_log_stream_and_key_limit() -> None:
    text = section("Runbooks")
    assert f"'{DEFAULT_STATS_SOCKET}'" in text
    assert f"stream `{CONTAINER_NAME}/{CONTAINER_NAME}/<task id>`" in text
    assert f"up to {MAX_KEYS_PER_DOMAIN} `[[dkim]]` entries" in text
    assert "quiver ctl stop" in text and "quiver ctl start" in text


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_the_dkim_record_command_prints_the_record(tmp_path: Path, algorithm: str) -> None:
    text = section("Runbooks")
    match = re.search(r"`(\.venv/bin/python -c \"import sys.*?\" q2027\.pem)`", text, re.S)
    assert match is not None
    argv = shlex.split(" ".join(match.group(1).split()))
    pem = generate_private_key(algorithm)
    (tmp_path / "q2027.pem").write_bytes(pem)
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == dns_txt_value(pem)
