"""`quiver dlq show|redrive` as a user runs it (a child process with the environment
`quiver local` prints) against the queues on moto's server: show deletes nothing,
redrive moves bodies and attributes back unchanged (ids and attempt counts kept),
first the message then the delete, for the outbound and the events DLQ."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiver import envelope as envelope_mod
from quiver.devstack.moto_server import MotoServer, aws_env, client, create_resources, start_moto
from quiver.events import pack_batches
from quiver.settings import Deployment, deployment_env
from quiver.storage.base import COPY_ATTRIBUTE

pytestmark = pytest.mark.integration

RAW = b"From: a@news.test\r\nTo: x@alpha.test\r\nSubject: hi\r\n\r\nhello\r\n"
GIVEN_UP = ("received 9 times without completing (a crash or hang each time; the "
            "queue's maxReceiveCount is 10): given up, message kept in the outbound DLQ")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("dlq-cli"))
    try:
        yield server, create_resources(server.endpoint)
    finally:
        server.stop()


@pytest.fixture
def quiver(moto: tuple[MotoServer, Deployment], tmp_path: Path):
    server, deployment = moto
    env = {**os.environ, **aws_env(server.endpoint), **deployment_env(deployment)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiver", "dlq", *args], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return run


def envelope_body(n: int) -> str:
    """An envelope as the sender re-enqueues it: bookkeeping on, attempt 3."""
    return envelope_mod.encode(envelope_mod.decode(json.dumps({
        "v": 1, "id": f"dlq-{n}", "from": "bounces@news.test",
        "to": [f"a{n}@alpha.test", f"b{n}@alpha.test"],
        "raw": base64.b64encode(RAW).decode(), "_attempt": 3, "_queued_at": 1_790_000_000.5,
    })))


def depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"])


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                  VisibilityTimeout=600, MessageAttributeNames=["All"])
        if not got.get("Messages"):
            return out
        for message in got["Messages"]:
            out.append(message)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


REDRIVEN = {COPY_ATTRIBUTE: {"DataType": "String", "StringValue": "redrive"}}


def test_outbound_show_then_redrive_one_then_the_rest(
        moto: tuple[MotoServer, Deployment], quiver) -> None:
    server, deployment = moto
    sqs = client(server.endpoint, "sqs")
    dlq, outbound = deployment.outbound_dlq_url, deployment.outbound_queue_url
    sent = {}
    for n in range(3):
        # Two as the sender's give-up leaves them, one as SQS's own move leaves it.
        attributes = {"quiver-reason": {"DataType": "String", "StringValue": GIVEN_UP},
                      "quiver-message-id": {"DataType": "String", "StringValue": f"sqs-{n}"}
                      } if n < 2 else {}
        body = envelope_body(n)
        sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageAttributes=attributes)
        sent[body] = attributes

    shown = quiver("show", "--json")
    assert shown.returncode == 0, shown.stderr
    out = json.loads(shown.stdout)
    assert (out["messages"], out["sampled"], out["oldest_is_of_all"]) == (3, 3, True)
    assert out["oldest"] is not None
    assert sorted(m["id"] for m in out["sample"]) == ["dlq-0", "dlq-1", "dlq-2"]
    assert {m["attempt"] for m in out["sample"]} == {3}
    assert sorted(m["recipients"] for m in out["sample"])[0] == ["a0@alpha.test",
                                                                 "b0@alpha.test"]
    reasons = {r["reason"]: r["count"] for r in out["reasons"]}
    assert reasons[GIVEN_UP] == 2
    (moved_by_sqs,) = [r for r in reasons if r != GIVEN_UP]
    assert moved_by_sqs.startswith("moved by SQS after the outbound queue's maxReceiveCount")
    # Show deleted nothing and hid nothing.
    assert depth(sqs, dlq) == 3
    text = quiver("show")
    assert text.returncode == 0, text.stderr
    assert "3 messages" in text.stdout and "oldest (of all)" in text.stdout
    assert "id dlq-1 attempt 3 to a1@alpha.test, b1@alpha.test" in text.stdout

    one = quiver("redrive", "--max", "1", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["moved"] == 1
    assert depth(sqs, dlq) == 2
    (back,) = drain(sqs, outbound)
    assert back["Body"] in sent  # byte for byte: id, attempt count and bookkeeping kept
    # Attributes kept, and the redrive's mark added: its finals are claimed.
    assert back.get("MessageAttributes", {}) == {**sent[back["Body"]], **REDRIVEN}
    assert envelope_mod.decode(back["Body"]).attempt == 3

    rest = quiver("redrive")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.startswith("moved 2 of 2 from ")
    assert depth(sqs, dlq) == 0
    others = drain(sqs, outbound)
    assert sorted([back["Body"], *(m["Body"] for m in others)]) == sorted(sent)
    assert all(m.get("MessageAttributes", {}) == {**sent[m["Body"]], **REDRIVEN}
               for m in others)

    empty = quiver("redrive", "--json")
    assert (empty.returncode, json.loads(empty.stdout)["moved"]) == (0, 0)


def test_events_dlq_show_names_a_broken_batch_and_redrive_moves_both(
        moto: tuple[MotoServer, Deployment], quiver) -> None:
    server, deployment = moto
    sqs = client(server.endpoint, "sqs")
    events_dlq = sqs.get_queue_url(QueueName="quiver-events-dlq")["QueueUrl"]
    record = {"v": 1, "event": "delivered", "at": "2026-11-26T00:00:00.000Z", "id": "m-7",
              "rcpt": "a@alpha.test", "from": "b@news.test", "tenant": None,
              "campaign": None, "pool": "p", "meta": {}, "attempt": 1}
    ((batch_id, batch),) = pack_batches([record, {**record, "rcpt": "b@alpha.test"}])
    bodies = {batch, '{"format": "something else"}'}
    for body in bodies:
        sqs.send_message(QueueUrl=events_dlq, MessageBody=body)

    shown = quiver("show", "--queue", "events", "--json")
    assert shown.returncode == 0, shown.stderr
    out = json.loads(shown.stdout)
    assert out["dlq_url"] == events_dlq and out["source_url"] == deployment.events_queue_url
    by_batch = {m.get("batch"): m for m in out["sample"]}
    assert by_batch[batch_id]["records"] == 2 and by_batch[batch_id]["ids"] == ["m-7"]
    assert by_batch[batch_id]["events"] == {"delivered": 2}
    assert by_batch[None]["reason"].startswith("not a v1 event batch")

    moved = quiver("redrive", "--queue", "events")
    assert moved.returncode == 0, moved.stderr
    assert depth(sqs, events_dlq) == 0
    assert {m["Body"] for m in drain(sqs, deployment.events_queue_url)} == bodies


def test_usage_errors_exit_2_and_say_what_is_wrong(
        moto: tuple[MotoServer, Deployment], quiver) -> None:
    bad = quiver("redrive", "--max", "0")
    assert bad.returncode == 2 and "--max must be at least 1" in bad.stderr
    server, _ = moto
    unset = subprocess.run([sys.executable, "-m", "quiver", "dlq", "show"],
                           env={**os.environ, **aws_env(server.endpoint),
                                "QUIVER_OUTBOUND_QUEUE_URL": ""},
                           capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and "QUIVER_OUTBOUND_QUEUE_URL" in unset.stderr


def test_the_readmes_dlq_commands_run(moto: tuple[MotoServer, Deployment]) -> None:
    server, deployment = moto
    sqs = client(server.endpoint, "sqs")
    events_dlq = sqs.get_queue_url(QueueName="quiver-events-dlq")["QueueUrl"]
    for n in (10, 11):
        sqs.send_message(QueueUrl=deployment.outbound_dlq_url, MessageBody=envelope_body(n))
    sqs.send_message(QueueUrl=events_dlq, MessageBody='{"format": "not a batch"}')
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (shell,) = [block for block in readme.split("```sh\n")[1:]
                if block.startswith("quiver dlq ")]
    env = {**os.environ, **aws_env(server.endpoint), **deployment_env(deployment),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in shell.split("```")[0].splitlines():
        done = subprocess.run(shlex.split(line.partition("#")[0]), env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (line, done.stderr)
    # One outbound message moved back, the other still dead; the events DLQ emptied.
    assert depth(sqs, deployment.outbound_dlq_url) == 1
    assert depth(sqs, events_dlq) == 0
    assert len(drain(sqs, deployment.outbound_queue_url)) == 1
    drain(sqs, deployment.events_queue_url)
    drain(sqs, deployment.outbound_dlq_url)
