"""The policy as a versioned S3 object, on moto's server over HTTP: read at start,
re-read by ETag (an unchanged object is a 304), a fleet-sized policy (over SSM's
8 KB) loads, and bad objects are refused with the running policy kept."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiver.devstack.moto_server import MotoServer, client, start_moto
from quiver.policy import PolicyError
from quiver.policy.reload import PolicySource, PolicyWatcher
from quiver.policy.source import MAX_POLICY_BYTES, S3PolicyReader, policy_reader, read_policy

pytestmark = pytest.mark.integration

# The largest SSM parameter (advanced tier), the policy's earlier home.
SSM_ADVANCED_MAX_BYTES = 8192

BUCKET = "quiver-config-test"
KEY = "policy/quiver.toml"
SPEC = f"s3://{BUCKET}/{KEY}"


def fleet_policy(sources: int, *, max_connections: int = 20, ehlo: str = "mta.example.com") -> str:
    """A deployable-shaped policy with `sources` egress sources over three nodes."""
    lines = [
        'version = 1', 'default_pool = "bulk"',
        '[delivery]', f'ehlo = "{ehlo}"',
        '[proxy]', 'frontend_port = 2500', 'health_port = 8500',
    ]
    for node, az in (("egress-a", "a"), ("egress-b", "b"), ("egress-c", "c")):
        lines += [f"[proxy.nodes.{node}]", f'az = "us-east-1{az}"',
                  f'address = "10.60.{"abc".index(az)}.10"']
    names = []
    for i in range(sources):
        node = i % 3
        name = f"bulk{i + 1:03d}"
        names.append(name)
        lines += [f"[sources.{name}]", f'ip = "198.51.{100 + i // 200}.{10 + i % 200}"',
                  f'local_ip = "10.60.{node}.{20 + i // 3}"', f'node = "egress-{"abc"[node]}"',
                  f'ehlo = "{name}.mail.example.com"']
    lines += ["[pools.bulk]", "sources = [" + ", ".join(f'"{n}"' for n in names) + "]",
              "[providers]", 'google = ["*.google.com"]',
              "[[throttles]]", 'source = "*"', f"max_connections = {max_connections}"]
    # Each source's own cap at one provider (a warm-up step): typical of a fleet.
    for name in names:
        lines += ["[[throttles]]", f'source = "{name}"', 'provider = "google"',
                  'max_rate = "500/h"']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("policy-s3"))
    try:
        s3 = client(server.endpoint, "s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET,
                                 VersioningConfiguration={"Status": "Enabled"})
        yield server
    finally:
        server.stop()


class CountingS3:
    """moto's S3 client over HTTP, counting the requests and bodies it got back."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self.gets = 0
        self.bodies = 0

    def get_object(self, **request: Any) -> Any:
        self.gets += 1
        response = self._s3.get_object(**request)
        self.bodies += 1
        return response


def put(moto: MotoServer, text: str | bytes) -> str:
    body = text.encode() if isinstance(text, str) else text
    response = client(moto.endpoint, "s3").put_object(Bucket=BUCKET, Key=KEY, Body=body)
    return str(response["VersionId"])


def test_a_fleet_policy_too_large_for_ssm_loads_from_s3(moto: MotoServer) -> None:
    text = fleet_policy(50)
    assert len(text.encode()) > SSM_ADVANCED_MAX_BYTES
    version = put(moto, text)
    s3 = functools.cache(lambda: client(moto.endpoint, "s3"))
    reader = policy_reader(SPEC, s3=s3)
    policy, base, read = read_policy(SPEC, read=reader)
    assert read == text and len(policy.sources) == 50 and base == Path.cwd()
    assert isinstance(reader, S3PolicyReader) and reader.version_id == version


def test_an_unchanged_object_is_a_304_and_a_new_version_is_reloaded(moto: MotoServer) -> None:
    put(moto, fleet_policy(6, max_connections=20))
    counting = CountingS3(client(moto.endpoint, "s3"))
    reader = S3PolicyReader(SPEC, s3=lambda: counting)
    policy, _, text = read_policy(SPEC, read=reader)
    applied: list[int | None] = []
    watcher = PolicyWatcher(
        PolicySource(origin=SPEC, read=reader, text=text, interval=0), current=policy,
        apply=lambda p: applied.append(p.throttles[0].max_connections))

    assert asyncio.run(watcher.check()) is None  # unchanged: no body came back
    assert (counting.gets, counting.bodies) == (2, 1)

    second = put(moto, fleet_policy(6, max_connections=7))
    change = asyncio.run(watcher.check())
    assert change is not None and change.applied == ("throttles",)
    assert applied == [7] and reader.version_id == second
    assert asyncio.run(watcher.check()) is None
    assert (counting.gets, counting.bodies) == (4, 2)


def test_a_refused_version_keeps_the_running_policy(moto: MotoServer) -> None:
    put(moto, fleet_policy(3))
    reader = S3PolicyReader(SPEC, s3=lambda: client(moto.endpoint, "s3"))
    policy, _, text = read_policy(SPEC, read=reader)
    watcher = PolicyWatcher(PolicySource(origin=SPEC, read=reader, text=text, interval=0),
                            current=policy, apply=lambda p: None)
    put(moto, fleet_policy(3).replace('default_pool = "bulk"', 'default_pool = "nope"'))
    change = asyncio.run(watcher.check())
    assert change is not None and any("unknown pool 'nope'" in e for e in change.errors)
    assert watcher.current == policy


def test_bad_objects_get_clear_errors(moto: MotoServer) -> None:
    s3 = lambda: client(moto.endpoint, "s3")  # noqa: E731
    with pytest.raises(PolicyError, match=r"NoSuchKey|does not exist"):
        policy_reader(f"s3://{BUCKET}/missing.toml", s3=s3)()
    with pytest.raises(PolicyError, match="expected s3://<bucket>/<key>"):
        policy_reader(f"s3://{BUCKET}", s3=s3)
    with pytest.raises(PolicyError, match="no S3 client"):
        policy_reader(SPEC)
    put(moto, b"\xff\xfe not utf-8")
    with pytest.raises(PolicyError, match="not UTF-8"):
        policy_reader(SPEC, s3=s3)()
    put(moto, b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="a policy may have at most"):
        policy_reader(SPEC, s3=s3)()
