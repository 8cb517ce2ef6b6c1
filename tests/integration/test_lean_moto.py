"""bench/lean_moto.py's lean mode answers as moto as shipped does.

Two moto servers, plain and lean, get the same scripted sequence of SQS calls
(the benchmark's: batches sent, received with visibility, visibility changed,
deleted with stale and invalid receipt handles, delayed, redriven to a DLQ,
long polls, queue attributes; plus a FIFO queue, which keeps moto's own code),
and every answer must be the same, once what is random by design (message ids,
receipt handles, timestamps, request ids, the server's port) is masked.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from quiver.devstack import moto_server

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import lean_moto  # noqa: E402

pytestmark = pytest.mark.integration

# Random by design, so masked (the key is kept: whether it is there must match).
RANDOM_KEYS = {"MessageId", "ReceiptHandle", "SentTimestamp", "ApproximateFirstReceiveTimestamp",
               "CreatedTimestamp", "LastModifiedTimestamp", "SequenceNumber"}
DELAY = 2  # seconds, DelaySeconds of the delayed message
POLL = 1  # seconds, WaitTimeSeconds of the long polls
SYSTEM = ["ApproximateReceiveCount", "SentTimestamp", "SenderId"]
# moto's receipt handles, as error messages quote them.
HANDLE = re.compile(r"\b[a-z]{185}\b")


def mask(value: Any, endpoint: str) -> Any:
    if isinstance(value, dict):
        return {k: "<random>" if k in RANDOM_KEYS else mask(v, endpoint)
                for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [mask(v, endpoint) for v in value]
    if isinstance(value, str):
        return HANDLE.sub("<handle>", value.replace(endpoint, "<endpoint>"))
    return value


class Script:
    """Runs the calls against one server and records each (masked) answer or error."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sqs = moto_server.client(endpoint, "sqs")
        self.answers: list[tuple[str, Any]] = []

    def call(self, label: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            answer = fn(**kwargs)
        except ClientError as exc:
            self.answers.append((label, {"error": mask(exc.response.get("Error"),
                                                       self.endpoint)}))
            return None
        self.answers.append((label, mask(answer, self.endpoint)))
        return answer

    def note(self, label: str, value: Any) -> None:
        self.answers.append((label, mask(value, self.endpoint)))

    def counts(self, label: str, url: str) -> None:
        self.call(label, self.sqs.get_queue_attributes, QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])

    def receive(self, label: str, url: str, *, visibility: int, wait: int = 0,
                count: int = 10, attributes: tuple[str, ...] = ("All",)
                ) -> list[dict[str, Any]]:
        named = {"MessageAttributeNames": list(attributes)} if attributes else {}
        got = self.call(label, self.sqs.receive_message, QueueUrl=url,
                        MaxNumberOfMessages=count, VisibilityTimeout=visibility,
                        WaitTimeSeconds=wait, MessageSystemAttributeNames=SYSTEM, **named)
        return list((got or {}).get("Messages", []))


def run_script(endpoint: str) -> list[tuple[str, Any]]:
    s = Script(endpoint)
    sqs = s.sqs

    # The benchmark's queues, made as the benchmark makes them.
    deployment = moto_server.create_resources(endpoint)
    s.note("deployment", {k: str(v) for k, v in asdict(deployment).items()})
    s.call("attributes of the outbound queue", sqs.get_queue_attributes,
           QueueUrl=deployment.outbound_queue_url, AttributeNames=["All"])

    dlq = s.call("create dlq", sqs.create_queue, QueueName="t-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    attrs = {"VisibilityTimeout": "30", "RedrivePolicy": redrive}
    main = s.call("create main", sqs.create_queue, QueueName="t-main",
                  Attributes=attrs)["QueueUrl"]
    s.call("create main again", sqs.create_queue, QueueName="t-main", Attributes=attrs)
    s.call("create main differently", sqs.create_queue, QueueName="t-main",
           Attributes={"VisibilityTimeout": "31"})

    # Ten sent in a batch (one with message attributes), one alone, one delayed.
    s.call("send batch", sqs.send_message_batch, QueueUrl=main, Entries=[
        {"Id": f"e{i}", "MessageBody": f"body {i} " + "x" * 5000,
         **({"MessageAttributes": {"kind": {"DataType": "String", "StringValue": "k"}}}
            if i == 3 else {})}
        for i in range(10)])
    s.call("send one", sqs.send_message, QueueUrl=main, MessageBody="single")
    s.call("send delayed", sqs.send_message_batch, QueueUrl=main, Entries=[
        {"Id": "d", "MessageBody": "delayed", "DelaySeconds": DELAY}])
    sent = time.time()  # no earlier than the server's timestamp of the message
    s.call("send invalid delay", sqs.send_message_batch, QueueUrl=main, Entries=[
        {"Id": "bad", "MessageBody": "late", "DelaySeconds": 901}])
    s.counts("counts after sending", main)

    first = s.receive("receive 10", main, visibility=30)
    s.receive("receive the rest", main, visibility=30)
    s.receive("receive nothing left", main, visibility=30)
    s.counts("counts with all in flight", main)

    # Five made visible again (and an invalid handle), then received a second time.
    s.call("visibility to 0", sqs.change_message_visibility_batch, QueueUrl=main, Entries=[
        *({"Id": f"v{i}", "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
          for i, m in enumerate(first[:5])),
        {"Id": "nope", "ReceiptHandle": "not-a-handle", "VisibilityTimeout": 0}])
    s.call("visibility beyond 12 hours", sqs.change_message_visibility_batch, QueueUrl=main,
           Entries=[{"Id": "long", "ReceiptHandle": first[5]["ReceiptHandle"],
                     "VisibilityTimeout": 43200}])
    # Without message attributes asked for: the next answers must still have them.
    second = s.receive("receive again (count 2)", main, visibility=30, attributes=())
    s.counts("counts after receiving again", main)

    # Deletes: a stale handle (first receive of a message received again), a current
    # one, one never received again, an invalid one; then the same ones again.
    entries = [
        {"Id": "stale", "ReceiptHandle": first[0]["ReceiptHandle"]},
        {"Id": "current", "ReceiptHandle": second[1]["ReceiptHandle"]},
        {"Id": "once", "ReceiptHandle": first[6]["ReceiptHandle"]},
        {"Id": "invalid", "ReceiptHandle": "bogus-handle"},
    ]
    s.call("delete batch", sqs.delete_message_batch, QueueUrl=main, Entries=entries)
    s.call("delete batch twice", sqs.delete_message_batch, QueueUrl=main, Entries=entries)
    s.call("delete the current handle of a message deleted by its stale one",
           sqs.delete_message_batch, QueueUrl=main,
           Entries=[{"Id": "x", "ReceiptHandle": second[0]["ReceiptHandle"]}])
    s.call("delete one invalid", sqs.delete_message, QueueUrl=main, ReceiptHandle="bogus")
    s.call("delete duplicate handles", sqs.delete_message_batch, QueueUrl=main, Entries=[
        {"Id": "a", "ReceiptHandle": first[7]["ReceiptHandle"]},
        {"Id": "b", "ReceiptHandle": first[7]["ReceiptHandle"]}])
    s.call("visibility of a deleted message", sqs.change_message_visibility, QueueUrl=main,
           ReceiptHandle=first[6]["ReceiptHandle"], VisibilityTimeout=0)
    s.counts("counts after deleting", main)

    # The delayed message becomes receivable after its delay. The server stamped it
    # before it answered, by this host's clock: past sent + DELAY it is due on any
    # machine, however slow (polling the server instead would change the call counts
    # compared below).
    while time.time() <= sent + DELAY:
        time.sleep(0.05)
    s.counts("counts after the delay", main)
    s.receive("receive the delayed one", main, visibility=30)

    # Redrive: everything still in flight made visible and received until it has been
    # received twice; the next receive moves such messages to the DLQ.
    held = [m for m in [*first, *second] if m["Body"] not in {"body 0 " + "x" * 5000}]
    s.call("all visible", sqs.change_message_visibility_batch, QueueUrl=main, Entries=[
        {"Id": f"h{i}", "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
        for i, m in enumerate(held[:10])])
    s.call("all visible (rest)", sqs.change_message_visibility_batch, QueueUrl=main,
           Entries=[{"Id": f"h{i}", "ReceiptHandle": m["ReceiptHandle"],
                     "VisibilityTimeout": 0} for i, m in enumerate(held[10:])] or [
               {"Id": "none", "ReceiptHandle": "none", "VisibilityTimeout": 0}])
    for round_ in range(3):
        s.receive(f"redrive round {round_}", main, visibility=0)
        s.counts(f"main after redrive round {round_}", main)
        s.counts(f"dlq after redrive round {round_}", dlq)
    in_dlq = s.receive("receive from the dlq", dlq, visibility=30)
    s.call("delete on the dlq with a handle from the main queue",
           sqs.delete_message_batch, QueueUrl=dlq,
           Entries=[{"Id": "old", "ReceiptHandle": second[2]["ReceiptHandle"]}])
    s.call("visibility on the main queue of a message in the dlq",
           sqs.change_message_visibility_batch, QueueUrl=main, Entries=[
               {"Id": "moved", "ReceiptHandle": second[3]["ReceiptHandle"],
                "VisibilityTimeout": 5}])
    s.call("delete on the main queue with a handle of a message in the dlq",
           sqs.delete_message_batch, QueueUrl=main,
           Entries=[{"Id": "moved", "ReceiptHandle": second[3]["ReceiptHandle"]}])
    s.call("delete from the dlq", sqs.delete_message_batch, QueueUrl=dlq, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(in_dlq)])
    s.counts("dlq at the end", dlq)

    # Long polls: one that times out, one that a message sent meanwhile ends.
    started = time.monotonic()
    s.receive("long poll on an empty queue", dlq, visibility=30, wait=POLL)
    s.note("long poll waited", time.monotonic() - started >= POLL * 0.9)
    sender = threading.Timer(0.3, lambda: moto_server.client(endpoint, "sqs").send_message(
        QueueUrl=dlq, MessageBody="arrives mid-poll"))
    sender.start()
    s.receive("long poll ended by a send", dlq, visibility=30, wait=5)
    sender.join(timeout=10)

    # Purged messages' handles are invalid afterwards.
    s.call("send to purge", sqs.send_message, QueueUrl=dlq, MessageBody="to purge")
    purged = s.receive("receive to purge", dlq, visibility=30)
    s.call("purge", sqs.purge_queue, QueueUrl=dlq)
    s.call("visibility of a purged message", sqs.change_message_visibility_batch,
           QueueUrl=dlq, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
                                   "VisibilityTimeout": 5} for i, m in enumerate(purged)])
    s.call("delete a purged message", sqs.delete_message_batch, QueueUrl=dlq, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(purged)])

    # A FIFO queue, content-based deduplication, a duplicate dropped.
    fifo = s.call("create fifo", sqs.create_queue, QueueName="t.fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    s.call("fifo send", sqs.send_message_batch, QueueUrl=fifo, Entries=[
        {"Id": "a", "MessageBody": "one", "MessageGroupId": "g"},
        {"Id": "b", "MessageBody": "two", "MessageGroupId": "g"},
        {"Id": "c", "MessageBody": "one", "MessageGroupId": "g"},
        {"Id": "d", "MessageBody": "three", "MessageGroupId": "h",
         "MessageDeduplicationId": "dedupe-3"}])
    s.call("fifo send without a group", sqs.send_message, QueueUrl=fifo, MessageBody="x")
    got = s.receive("fifo receive", fifo, visibility=30)
    s.receive("fifo receive while the groups are pending", fifo, visibility=30)
    s.call("fifo delete", sqs.delete_message_batch, QueueUrl=fifo, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
    s.call("fifo attributes", sqs.get_queue_attributes, QueueUrl=fifo, AttributeNames=["All"])

    for url in (main, dlq, deployment.outbound_queue_url):
        s.counts(f"final counts {url.rsplit('/', 1)[-1]}", url)
    s.call("list queues", sqs.list_queues)
    return s.answers


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, tuple[moto_server.MotoServer, lean_moto.CallLog]]]:
    started: dict[str, tuple[moto_server.MotoServer, lean_moto.CallLog]] = {}
    try:
        for kind in ("plain", "lean"):
            started[kind] = lean_moto.start(log_dir=tmp_path_factory.mktemp(f"moto-{kind}"),
                                            lean=kind == "lean")
        yield started
    finally:
        for server, _ in started.values():
            server.stop()


def test_lean_moto_answers_every_call_as_plain_moto(
        servers: dict[str, tuple[moto_server.MotoServer, lean_moto.CallLog]]) -> None:
    answers = {kind: run_script(server.endpoint) for kind, (server, _) in servers.items()}
    plain, lean = answers["plain"], answers["lean"]
    assert [label for label, _ in lean] == [label for label, _ in plain]
    for (label, want), (_, got) in zip(plain, lean, strict=True):
        assert got == want, label

    # The script did reach the cases it is about (in plain moto's answers).
    by_label = dict(plain)
    assert by_label["counts after sending"]["Attributes"] == {
        "ApproximateNumberOfMessages": "11", "ApproximateNumberOfMessagesNotVisible": "0",
        "ApproximateNumberOfMessagesDelayed": "1"}
    again = by_label["receive again (count 2)"]["Messages"]
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in again} == {"2"}
    assert not any("MessageAttributes" in m for m in again)
    assert any("MessageAttributes" in m for m in by_label["receive from the dlq"]["Messages"])
    deleted = by_label["delete batch"]
    assert [f["Id"] for f in deleted["Failed"]] == ["invalid"]
    assert [f["Code"] for f in deleted["Failed"]] == ["ReceiptHandleIsInvalid"]
    assert len(deleted["Successful"]) == 3
    assert by_label["delete batch twice"] == deleted
    assert by_label["delete one invalid"]["error"]["Code"] == "ReceiptHandleIsInvalid"
    assert [m["Body"] for m in by_label["receive the delayed one"]["Messages"]] == ["delayed"]
    assert int(by_label["dlq after redrive round 2"]["Attributes"][
        "ApproximateNumberOfMessages"]) > 0
    assert by_label["long poll waited"] is True
    assert [m["Body"] for m in by_label["long poll ended by a send"]["Messages"]] == [
        "arrives mid-poll"]
    assert len(by_label["fifo receive"]["Messages"]) == 3

    # Both counted their calls alike; only the lean one stopped logging each request.
    plain_calls, lean_calls = (calls.since(0) for _, calls in servers.values())
    assert plain_calls == lean_calls and plain_calls["ReceiveMessage t-main"] > 0
    plain_log, lean_log = (server.log_path.read_text(errors="replace")
                           for server, _ in servers.values())
    assert '"POST / HTTP/1.1" 200' in plain_log
    assert '"POST / HTTP/1.1"' not in lean_log


def test_lean_moto_keeps_connections_alive_plain_moto_closes_them(
        servers: dict[str, tuple[moto_server.MotoServer, lean_moto.CallLog]]) -> None:
    """Three calls on one HTTP/1.1 connection: plain moto answers the first and closes;
    lean moto answers all three on the same connection, each body intact."""
    import http.client
    from urllib.parse import urlsplit

    body = json.dumps({"QueueNamePrefix": "t-"})
    headers = {"Content-Type": "application/x-amz-json-1.0",
               "X-Amz-Target": "AmazonSQS.ListQueues",
               "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/"
                                "aws4_request, SignedHeaders=host, Signature=0"}
    for kind, (server, _) in servers.items():
        parts = urlsplit(server.endpoint)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        answers = []
        try:
            for _ in range(3):
                conn.request("POST", "/", body=body, headers=headers)
                response = conn.getresponse()
                answers.append((response.status, response.getheader("Connection"),
                                json.loads(response.read())))
                if response.will_close:
                    break
        finally:
            conn.close()
        if kind == "plain":
            assert len(answers) == 1 and answers[0][1] == "close"
        else:
            assert len(answers) == 3 and all(a[1] is None for a in answers)
            assert all(a[0] == 200 and a[2] == answers[0][2] for a in answers)


def test_raw_answers_to_the_hot_calls_are_the_same_json(
        servers: dict[str, tuple[moto_server.MotoServer, lean_moto.CallLog]]) -> None:
    """The four calls lean moto answers with json.dumps give the JSON moto's serializer
    gives (random values masked), read raw as the sender's lean client reads them."""
    import asyncio
    import os

    import botocore.session

    from quiver.storage.base import Outgoing
    from quiver.storage.sqs_lean import (
        LeanSqsClient,
        delete_entries,
        receive_payload,
        send_entries,
        visibility_entries,
    )

    os.environ.update(moto_server.FAKE_CREDENTIALS)
    random_value = re.compile(r'"(MessageId|ReceiptHandle|SentTimestamp|SenderId)": ?"[^"]*"')

    async def answers(endpoint: str) -> list[Any]:
        client = LeanSqsClient(region="us-east-1",
                               credentials=botocore.session.Session().get_credentials())
        sqs = moto_server.client(endpoint, "sqs")
        url = sqs.create_queue(QueueName="t-raw")["QueueUrl"]
        out = []

        async def call(action: str, payload: dict[str, Any]) -> dict[str, Any]:
            body = await client.call(url=url, action=action, payload=payload)
            out.append(json.loads(random_value.sub(r'"\1":"x"', body.decode())))
            return json.loads(body)

        await call("SendMessageBatch", {"QueueUrl": url, "Entries": send_entries(
            [Outgoing(body=f"raw {i}") for i in range(3)])})
        got = await call("ReceiveMessage", receive_payload(url, max_messages=10,
                                                           wait_seconds=1, visibility=30))
        handles = [m["ReceiptHandle"] for m in got["Messages"]]
        await call("ChangeMessageVisibilityBatch", {"QueueUrl": url, "Entries":
                                                    visibility_entries(handles, seconds=0)})
        again = await call("ReceiveMessage", receive_payload(url, max_messages=10,
                                                             wait_seconds=1, visibility=30))
        fresh = [m["ReceiptHandle"] for m in again["Messages"]]
        await call("DeleteMessageBatch", {"QueueUrl": url, "Entries": delete_entries(
            [*fresh, "not-a-handle"])})
        await call("ReceiveMessage", receive_payload(url, max_messages=10, wait_seconds=0,
                                                     visibility=30))
        await client.close()
        return out

    plain, lean = (asyncio.run(answers(server.endpoint)) for server, _ in servers.values())
    assert lean == plain
    assert len(plain[1]["Messages"]) == 3 and plain[-1] == {}
    assert [f["Id"] for f in plain[-2]["Failed"]] == ["3"]
