"""Operator controls on moto's server over HTTP: the DynamoDB store answers as the
in-memory fake does (one contract, both stores), and `quiver ctl ...` as a user runs
it (a child process, table and events queue from the environment `quiver local`
prints) writes the table and records one `control` event per change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto_tables import fresh_table

from quiver.controls.model import Control, Selector
from quiver.devstack.moto_server import (
    MotoServer,
    aws_env,
    client,
    create_resources,
    start_moto,
)
from quiver.events import Record, unpack_batch, validate_record
from quiver.settings import Deployment, deployment_env
from quiver.storage.base import ControlStore
from quiver.storage.dynamo import DynamoControls
from quiver.storage.memory import MemoryControls

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("controls"))
    try:
        yield server, create_resources(server.endpoint)
    finally:
        server.stop()



@pytest.fixture(params=["memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> ControlStore:
    if request.param == "memory":
        return MemoryControls()
    server, _ = request.getfixturevalue("moto")
    ddb = client(server.endpoint, "dynamodb")
    return DynamoControls(ddb, fresh_table(ddb))


def control(cid: str, kind: str = "pause", expires: float | None = None,
            **selector: str) -> Control:
    return Control(id=cid, kind=kind, selector=Selector.of(dict(selector)),  # type: ignore[arg-type]
                   reason="a reason: with punctuation, é", who="arn:aws:iam::1:user/ops",
                   created_at=T0 + 0.25, expires_at=expires)


async def test_put_all_remove_round_trip(store: ControlStore) -> None:
    assert await store.all() == []
    pause = control("a1", domain="gmail.test", tenant="acme", expires=T0 + 600.5)
    stop = control("b2", "stop")
    await store.put(pause)
    await store.put(stop)
    found = sorted(await store.all(), key=lambda c: c.id)
    # Expiry is kept in whole seconds, rounded up (DynamoDB's TTL reads seconds).
    assert found[0].expires_at == T0 + 601
    assert [(c.id, c.kind, c.selector, c.reason, c.who, c.created_at) for c in found] == [
        ("a1", "pause", Selector(domain="gmail.test", tenant="acme"), pause.reason,
         pause.who, T0 + 0.25),
        ("b2", "stop", Selector(), stop.reason, stop.who, T0 + 0.25)]
    assert found[1].expires_at is None
    removed = await store.remove("a1")
    assert removed is not None and removed.id == "a1"
    assert await store.remove("a1") is None
    assert [c.id for c in await store.all()] == ["b2"]


async def test_expired_controls_are_still_returned_for_readers_to_skip(
        store: ControlStore) -> None:
    await store.put(control("c3", expires=T0 + 1, domain="x.test"))
    (found,) = await store.all()
    assert found.expires_at is not None and not found.active(T0 + 2)


def test_an_item_no_sender_can_apply_is_skipped_not_fatal(
        moto: tuple[MotoServer, Deployment]) -> None:
    import asyncio

    server, _ = moto
    ddb = client(server.endpoint, "dynamodb")
    table = fresh_table(ddb)
    ddb.put_item(TableName=table, Item={"pk": {"S": "control"}, "sk": {"S": "BAD ID"},
                                        "kind": {"S": "pause"}})
    store = DynamoControls(ddb, table)
    asyncio.run(store.put(control("d4", domain="ok.test")))
    assert [c.id for c in asyncio.run(store.all())] == ["d4"]


@pytest.fixture
def ctl(moto: tuple[MotoServer, Deployment], tmp_path: Path):
    server, deployment = moto
    env = {**os.environ, **aws_env(server.endpoint), **deployment_env(deployment),
           "USER": "ops"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiver", "ctl", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return run


def events(moto: tuple[MotoServer, Deployment]) -> list[Record]:
    server, deployment = moto
    sqs = client(server.endpoint, "sqs")
    out: list[Record] = []
    while True:
        got = sqs.receive_message(QueueUrl=deployment.events_queue_url,
                                  MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return out
        for m in messages:
            out.extend(unpack_batch(m["Body"])[1])
            sqs.delete_message(QueueUrl=deployment.events_queue_url,
                               ReceiptHandle=m["ReceiptHandle"])


def listed(ctl) -> list[dict[str, Any]]:
    result = ctl("list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_pause_list_resume_with_events(ctl, moto: tuple[MotoServer, Deployment]) -> None:
    events(moto)  # whatever earlier tests left
    paused = ctl("pause", "--domain", "Gmail.Test", "--for", "30m", "--reason", "block 421")
    assert paused.returncode == 0, paused.stderr
    assert "pause of domain=gmail.test until 20" in paused.stdout
    (entry,) = listed(ctl)
    assert entry["kind"] == "pause" and entry["selector"] == {"domain": "gmail.test"}
    assert entry["reason"] == "block 421" and entry["who"]  # moto's STS identity
    assert entry["expires_at"] - entry["created_at"] == pytest.approx(1800, abs=1)
    table = ctl("list")
    assert table.returncode == 0 and "domain=gmail.test" in table.stdout
    assert table.stdout.rstrip().endswith("1 controls in force")
    # Resuming another selector matches nothing: exit 1, and what is in force is shown.
    other = ctl("resume", "--domain", "yahoo.test")
    assert other.returncode == 1 and entry["id"] in other.stderr
    resumed = ctl("resume", "--domain", "gmail.test")
    assert resumed.returncode == 0, resumed.stderr
    assert listed(ctl) == []
    recorded = events(moto)
    for record in recorded:
        validate_record(record)
    assert [(r["event"], r["action"], r["id"]) for r in recorded] == [
        ("control", "pause", entry["id"]), ("control", "resume", entry["id"])]
    first = recorded[0]
    assert first["selector"] == {"domain": "gmail.test"} and first["reason"] == "block 421"
    assert first["rcpt"] is None and first["attempt"] == 0 and first["until"].endswith("Z")
    assert first["actor"] == entry["who"]


def test_bounce_needs_a_reason_and_a_receipt_time_selector(ctl) -> None:
    assert ctl("bounce", "--campaign", "spring").returncode == 2  # --reason required
    routed = ctl("bounce", "--provider", "gmail", "--reason", "x")
    assert routed.returncode == 2 and "cannot name --source or --provider" in routed.stderr
    bounced = ctl("bounce", "--campaign", "spring", "--reason", "wrong list")
    assert bounced.returncode == 0, bounced.stderr
    (entry,) = listed(ctl)
    # An admin bounce lasts an hour unless told otherwise.
    assert entry["expires_at"] - entry["created_at"] == pytest.approx(3600, abs=1)
    assert ctl("cancel", entry["id"]).returncode == 0
    assert listed(ctl) == []


def test_stop_and_start(ctl, moto: tuple[MotoServer, Deployment]) -> None:
    events(moto)
    stopped = ctl("stop", "--reason", "incident 42")
    assert stopped.returncode == 0, stopped.stderr
    assert "STOP of all sending until lifted" in stopped.stdout
    assert [e["kind"] for e in listed(ctl)] == ["stop"]
    assert ctl("start").returncode == 0
    assert listed(ctl) == []
    again = ctl("start")  # nothing to lift: said, and not an error in an emergency
    assert again.returncode == 0 and "no stop" in again.stderr
    assert [r["action"] for r in events(moto)] == ["stop", "start"]


def test_usage_errors_exit_2(ctl) -> None:
    empty = ctl("pause")
    assert empty.returncode == 2 and "quiver ctl stop" in empty.stderr
    assert ctl("pause", "--domain", "bad..domain").returncode == 2
    assert ctl("pause", "--domain", "a.test", "--for", "soon").returncode == 2
    assert ctl("resume").returncode == 2
    policy = Path(__file__).resolve().parents[2] / "policy" / "quiver.toml"
    unknown = ctl("pause", "--pool", "nope", "--config", str(policy))
    assert unknown.returncode == 2 and "not in the policy" in unknown.stderr
    no_table = subprocess.run(
        [sys.executable, "-m", "quiver", "ctl", "list"],
        env={k: v for k, v in os.environ.items() if k != "QUIVER_CONTROLS_TABLE"},
        capture_output=True, text=True, timeout=120)
    assert no_table.returncode == 2 and "QUIVER_CONTROLS_TABLE" in no_table.stderr
    assert listed(ctl) == []


def test_the_readme_commands_run_as_shown(ctl, moto: tuple[MotoServer, Deployment]) -> None:
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Operator controls\n"):]
    shell = section[section.index("```sh\n") + 6:section.index("```", section.index("```sh\n") + 6)]
    lines = [line for line in shell.splitlines() if line.strip()]
    assert lines and all(line.startswith("quiver ctl ") for line in lines)
    events(moto)
    for line in lines:
        result = ctl(*shlex.split(line)[2:])
        assert result.returncode == 0, (line, result.stderr)
    # What is left in force: the pause of yahoo from bulk1 and the admin bounce.
    assert sorted(e["kind"] for e in listed(ctl)) == ["bounce", "pause"]
    assert [r["action"] for r in events(moto)] == ["pause", "pause", "resume", "bounce",
                                                   "stop", "start"]
    for entry in listed(ctl):
        assert ctl("cancel", entry["id"]).returncode == 0
