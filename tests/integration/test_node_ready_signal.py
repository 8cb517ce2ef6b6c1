"""A proxy node's ready signal end to end: the bootstrap's ready check (the text the
user data runs, proxy_tier.bootstrap.render_ready_check) asks a real HAProxy for its
/health on loopback, then PUTs the wait condition's signal to a presigned S3 URL of
moto's server, as a node PUTs to its handle's URL through the S3 gateway endpoint.
CloudFormation reads that object: here the test reads it back."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from haproxy_util import running_haproxy, short_tempdir

from proxy_tier.bootstrap import SIGNAL_URL_BUDGET, render_ready_check
from proxy_tier.render import render_haproxy_config
from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.devstack.processes import free_port_on
from quiver.policy import Policy, parse_policy

pytestmark = pytest.mark.integration

# CloudFormation's own bucket for wait condition signals is named so, per region.
BUCKET = "cloudformation-waitcondition-us-east-1"
NODE, NODE_ADDRESS, SOURCE_ADDRESS = "n1", "127.0.0.40", "127.0.0.41"
# The ready check, the health probes and up to SIGNAL_ATTEMPTS PUTs, bounded.
SCRIPT_TIMEOUT = 90.0


@dataclass(frozen=True)
class Rig:
    moto: MotoServer
    s3: Any
    policy: Policy
    workdir: Path


def loopback_policy() -> Policy:
    frontend = free_port_on([NODE_ADDRESS, SOURCE_ADDRESS])
    health = free_port_on([NODE_ADDRESS], avoid=[frontend])
    return parse_policy("\n".join([
        "local_only = true",
        'default_pool = "p"',
        "[proxy]",
        f"frontend_port = {frontend}",
        f"health_port = {health}",
        "allowed_ports = [25]",
        'allow_networks = ["127.0.0.0/8"]',
        f"[proxy.nodes.{NODE}]", 'az = "az-1"', f'address = "{NODE_ADDRESS}"',
        "[sources.s1]", 'ip = "192.0.2.41"', f'local_ip = "{SOURCE_ADDRESS}"',
        f'node = "{NODE}"', 'ehlo = "s1.example.com"',
        "[pools.p]", 'sources = ["s1"]',
    ]) + "\n")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("ready-signal")
    server = start_moto(log_dir=work)
    try:
        s3 = client(server.endpoint, "s3")
        s3.create_bucket(Bucket=BUCKET)
        yield Rig(moto=server, s3=s3, policy=loopback_policy(), workdir=work)
    finally:
        server.stop()


def handle_url(rig: Rig, key: str) -> str:
    """A presigned PUT URL like a wait condition handle's: host header signed only."""
    url: str = rig.s3.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)
    assert len(url) <= SIGNAL_URL_BUDGET
    return url


def run_ready_check(
    rig: Rig, key: str, *, health_attempts: int,
) -> subprocess.CompletedProcess[str]:
    script = rig.workdir / f"{key.replace('/', '_')}.sh"
    script.write_text(render_ready_check(rig.policy, NODE, signal_url=handle_url(rig, key),
                                         health_attempts=health_attempts))
    return subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT, check=False)


def signal(rig: Rig, key: str) -> dict[str, str]:
    """The signal as CloudFormation would read it from the handle's object."""
    body = rig.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    parsed: dict[str, str] = json.loads(body)
    return parsed


def health_url(policy: Policy) -> str:
    return f"http://{NODE_ADDRESS}:{policy.proxy.health_port}/health"


def test_a_serving_node_signals_success_after_haproxy_answers(rig: Rig) -> None:
    key = "arn%3Aaws%3Acloudformation/QuiverService/EgressNodeN1ReadyaaaaHandle"
    with short_tempdir() as run_dir:
        config = render_haproxy_config(rig.policy, NODE, stats_socket=f"{run_dir}/n1.sock")
        with running_haproxy(config, run_dir, name="n1"):
            result = run_ready_check(rig, key, health_attempts=5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "quiver: signalled SUCCESS to the deploy" in result.stdout
    assert signal(rig, key) == {
        "Status": "SUCCESS", "UniqueId": NODE,
        "Reason": f"node {NODE}: HAProxy answers {health_url(rig.policy)}",
        "Data": f"node {NODE}: HAProxy answers {health_url(rig.policy)}",
    }


def test_a_drained_node_fails_its_health_check_and_signals_failure(rig: Rig) -> None:
    # HAProxy runs but answers 503 (an operator drained it): the deploy must not go on.
    key = "arn%3Aaws%3Acloudformation/QuiverService/EgressNodeN1ReadybbbbHandle"
    with short_tempdir() as run_dir:
        config = render_haproxy_config(rig.policy, NODE, stats_socket=f"{run_dir}/n1.sock")
        with running_haproxy(config, run_dir, name="n1") as proxy:
            proxy.command("disable server drain/in_service")
            result = run_ready_check(rig, key, health_attempts=1)
    assert result.returncode == 1
    assert signal(rig, key) == {
        "Status": "FAILURE", "UniqueId": NODE,
        "Reason": f"node {NODE}: HAProxy does not answer {health_url(rig.policy)}",
        "Data": f"node {NODE}: HAProxy does not answer {health_url(rig.policy)}",
    }


def test_a_node_without_haproxy_signals_failure(rig: Rig) -> None:
    key = "arn%3Aaws%3Acloudformation/QuiverService/EgressNodeN1ReadyccccHandle"
    result = run_ready_check(rig, key, health_attempts=1)
    assert result.returncode == 1
    assert signal(rig, key)["Status"] == "FAILURE"
    assert "quiver: HAProxy does not answer" in result.stderr
