"""The local stack's unsubscribe endpoint: real HTTP on loopback to the same
Unsubscriber the Lambda runs, its stores on moto's server, its ring in a file."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quiver.devstack.moto_server import MotoServer, client, create_resources, start_moto
from quiver.devstack.servers.unsubscribe import UnsubscribeHttp, local_unsubscriber
from quiver.events import unpack_batch
from quiver.returnpath.admin import rotate_file
from quiver.settings import Deployment
from quiver.unsubscribe import Subject
from quiver.unsubscribe.headers import UnsubscribeHeaders

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Rig:
    moto: MotoServer
    deployment: Deployment
    server: UnsubscribeHttp
    headers: UnsubscribeHeaders


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("unsubscribe-local")
    moto = start_moto(log_dir=tmp)
    try:
        deployment = create_resources(moto.endpoint)
        key_file = tmp / "return-path-keys.json"
        ring = rotate_file(key_file, now=time.time() - 60)
        server = UnsubscribeHttp(local_unsubscriber(endpoint=moto.endpoint,
                                                    deployment=deployment, key_file=key_file))
        try:
            yield Rig(moto, deployment, server, UnsubscribeHeaders(ring))
        finally:
            server.stop()
    finally:
        moto.stop()


def request(rig: Rig, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = rig.server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def events(rig: Rig) -> list[dict[str, Any]]:
    sqs = client(rig.moto.endpoint, "sqs")
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=rig.deployment.events_queue_url,
                                  MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return out
        for message in got:
            out.extend(unpack_batch(message["Body"])[1])
            sqs.delete_message(QueueUrl=rig.deployment.events_queue_url,
                               ReceiptHandle=message["ReceiptHandle"])


def suppressed(rig: Rig, tenant: str, address: str) -> bool:
    item = client(rig.moto.endpoint, "dynamodb").get_item(
        TableName=rig.deployment.suppression_table, ConsistentRead=True,
        Key={"pk": {"S": f"tenant:{tenant}"}, "sk": {"S": f"address:{address}"}}).get("Item")
    return item is not None


def test_the_one_click_url_from_a_header_works_over_http(rig: Rig, tmp_path: Path) -> None:
    events(rig)
    token = rig.headers.token(Subject(tenant="acme", campaign="c", message_id="m-1",
                                      recipient="erin@example.org"))
    url = urllib.parse.urlsplit(rig.server.url + token)
    assert url.scheme == "http" and url.hostname == "127.0.0.1"
    status, page = request(rig, "GET", url.path)
    assert status == 200 and 'method="post"' in page
    assert not suppressed(rig, "acme", "erin@example.org") and events(rig) == []
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(2):
        status, page = request(rig, "POST", url.path, b"List-Unsubscribe=One-Click", form)
        assert status == 200 and "Unsubscribed" in page
    assert suppressed(rig, "acme", "erin@example.org")
    assert [(e["event"], e["rcpt"]) for e in events(rig)] == [
        ("unsubscribed", "erin@example.org")]


def test_bad_requests_change_nothing(rig: Rig) -> None:
    events(rig)
    assert request(rig, "POST", "/u/forged", b"List-Unsubscribe=One-Click")[0] == 400
    assert request(rig, "GET", "/elsewhere")[0] == 404
    big = b"List-Unsubscribe=One-Click&" + b"x" * 10_000
    assert request(rig, "POST", "/u/x", big)[0] == 413
    assert events(rig) == []
