"""One-click unsubscribe end to end on the local stack: the sender adds the signed
List-Unsubscribe to a real message, the local MX receives it, and the URL from
that header, asked over loopback HTTP, confirms on GET and unsubscribes once on
POST (the suppression row and one `unsubscribed` event on moto's server)."""

from __future__ import annotations

import email
import email.policy
import http.client
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from local_command import OutputReader, wait_until

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.samples import render
from quiver.devstack.stack import LocalStack, wait_for
from quiver.events import unpack_batch
from quiver.policy import load_policy
from quiver.returnpath import load_key_ring
from quiver.unsubscribe import Subject
from quiver.unsubscribe.headers import UnsubscribeHeaders

pytestmark = pytest.mark.integration


def events_on_queue(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.deployment is not None
    sqs = stack.client("sqs")
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=stack.deployment.events_queue_url,
                                  MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return out
        for message in got:
            out.extend(unpack_batch(message["Body"])[1])
            sqs.delete_message(QueueUrl=stack.deployment.events_queue_url,
                               ReceiptHandle=message["ReceiptHandle"])


def ask(url: urllib.parse.SplitResult, method: str, body: bytes = b"") -> tuple[int, str]:
    assert url.hostname is not None and url.port is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, url.path, body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_delivered_header_unsubscribes_once(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", haproxy=False, unsubscribe=True).start() as stack:
        assert stack.deployment is not None and stack.mx is not None
        assert "[[unsubscribe.domains]]" in (tmp_path / "stack" / "policy.toml").read_text()
        stack.start_sender()
        raw = render(message_id="u-1", from_addr="hello@news.quiver-demo.test",
                     to=["frank@alpha.test"], subject="news")
        QuiverClient(sqs=stack.client("sqs"), s3=stack.client("s3"),
                     queue_url=stack.deployment.outbound_queue_url,
                     spill_bucket=stack.deployment.spill_bucket).enqueue(OutboundMessage(
                         id="u-1", sender="bounces@news.quiver-demo.test",
                         to=["frank@alpha.test"], raw=raw, tenant="acme", campaign="dec"))
        assert wait_for(lambda: stack.mx is not None and stack.mx.received(), timeout=120)
        (record,) = stack.mx.received()
        delivered = email.message_from_bytes(Path(record["file"]).read_bytes(),
                                             policy=email.policy.default)
        assert delivered["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "list-unsubscribe-post" in str(delivered["DKIM-Signature"]).lower()
        match = re.search(r"<(http://127\.0\.0\.1:\d+/u/[A-Za-z0-9_-]+)>",
                          str(delivered["List-Unsubscribe"]))
        assert match is not None
        url = urllib.parse.urlsplit(match.group(1))

        status, page = ask(url, "GET")
        assert status == 200 and 'method="post"' in page
        ddb = stack.client("dynamodb")
        key = {"pk": {"S": "tenant:acme"}, "sk": {"S": "address:frank@alpha.test"}}

        def row() -> Any:
            assert stack.deployment is not None
            return ddb.get_item(TableName=stack.deployment.suppression_table, Key=key,
                                ConsistentRead=True).get("Item")

        assert row() is None
        for _ in range(2):
            assert ask(url, "POST", b"List-Unsubscribe=One-Click")[0] == 200
        assert row() is not None and row()["reason"]["S"] == "unsubscribe"
        deadline = time.monotonic() + 60
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not any(
                e["event"] == "delivered" for e in seen):
            seen += events_on_queue(stack)
            time.sleep(0.5)
        unsubscribed = [e for e in seen if e["event"] == "unsubscribed"]
        assert [(e["id"], e["rcpt"], e["tenant"], e["campaign"]) for e in unsubscribed] == [
            ("u-1", "frank@alpha.test", "acme", "dec")]


def test_quiver_local_unsubscribe_serves_the_endpoint_and_says_where(tmp_path: Path) -> None:
    """`quiver local --unsubscribe`: the banner names the endpoint, the policy points
    at it, a token signed with the stack's ring gets its confirmation page."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    local = subprocess.Popen(["quiver", "local", "--no-sender", "--unsubscribe", "--dir", "st"],
                             cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = OutputReader(local)
    try:
        output.wait_for(lambda line: line == "Press Ctrl-C to stop.", timeout=180)
        line = output.wait_for(lambda text: text.strip().startswith("unsubscribe "), timeout=1)
        base = line.split()[1].removesuffix("<token>")
        policy = load_policy(tmp_path / "st" / "policy.toml")
        rule = policy.unsubscribe.rule("news.quiver-demo.test", tenant=None)
        assert rule is not None and rule.url == base
        ring = load_key_ring(key_file="keys/return-path-keys.json", base_dir=tmp_path / "st")
        token = UnsubscribeHeaders(ring).token(Subject(
            tenant=None, campaign=None, message_id="m", recipient="gina@alpha.test"))
        status, page = wait_until(
            lambda: ask(urllib.parse.urlsplit(base + token), "GET"), timeout=30,
            what="the endpoint to answer")
        assert status == 200 and "gina@alpha.test" in page
        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=60) == 0
    finally:
        if local.poll() is None:
            local.kill()
            local.wait(timeout=60)
