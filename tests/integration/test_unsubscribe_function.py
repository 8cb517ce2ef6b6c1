"""The unsubscribe Lambda on moto's server over HTTP: function-URL-shaped requests in,
the suppression row in DynamoDB and the `unsubscribed` event on the events queue out.
GET changes nothing; a repeated POST changes nothing twice; a forged token nothing."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from functions.unsubscribe import handler as function
from quiver.devstack.moto_server import MotoServer, aws_env, client, create_resources, start_moto
from quiver.events import unpack_batch
from quiver.returnpath import KeyRing, rotated
from quiver.returnpath.admin import rotate_secret
from quiver.settings import ENV_KEY_RING_SECRET, Deployment, deployment_env
from quiver.unsubscribe import Subject
from quiver.unsubscribe.headers import UnsubscribeHeaders

pytestmark = pytest.mark.integration

SECRET = "quiver/return-path/keys"
SUBJECT = Subject(tenant="acme", campaign="dec", message_id="m-42", recipient="Ann@Example.org")


@dataclass(frozen=True)
class Context:
    """What Powertools reads of a Lambda context."""

    function_name: str = "quiver-unsubscribe"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:unsub"
    aws_request_id: str = "req-1"


@dataclass(frozen=True)
class Stack:
    server: MotoServer
    deployment: Deployment
    ring: KeyRing


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("unsubscribe"))
    try:
        deployment = create_resources(server.endpoint)
        secrets = client(server.endpoint, "secretsmanager")
        ring = rotate_secret(secrets, SECRET, now=time.time() - 60)
        yield Stack(server, deployment, ring)
    finally:
        server.stop()


@pytest.fixture
def env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {**aws_env(stack.server.endpoint), **deployment_env(stack.deployment),
                        ENV_KEY_RING_SECRET: SECRET}.items():
        monkeypatch.setenv(name, value)
    function.unsubscriber.cache_clear()
    yield
    function.unsubscriber.cache_clear()


def url_event(method: str, token: str, *, body: bytes = b"", base64_body: bool = False,
              content_type: str = "application/x-www-form-urlencoded") -> dict[str, Any]:
    """An event as a Lambda function URL delivers it (payload format 2.0)."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": f"/u/{token}",
        "rawQueryString": "",
        "headers": {"content-type": content_type, "host": "abc.lambda-url.us-east-1.on.aws",
                    "user-agent": "Mozilla/5.0"},
        "requestContext": {"http": {"method": method, "path": f"/u/{token}",
                                    "protocol": "HTTP/1.1", "sourceIp": "192.0.2.7"}},
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def suppression_item(stack: Stack, tenant: str, address: str) -> dict[str, Any] | None:
    ddb = client(stack.server.endpoint, "dynamodb")
    item: dict[str, Any] | None = ddb.get_item(
        TableName=stack.deployment.suppression_table,
        Key={"pk": {"S": f"tenant:{tenant}"}, "sk": {"S": f"address:{address}"}},
        ConsistentRead=True).get("Item")
    return item


def drain_events(stack: Stack) -> list[dict[str, Any]]:
    sqs = client(stack.server.endpoint, "sqs")
    records: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=stack.deployment.events_queue_url,
                                  MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return records
        for message in messages:
            records.extend(unpack_batch(message["Body"])[1])
            sqs.delete_message(QueueUrl=stack.deployment.events_queue_url,
                               ReceiptHandle=message["ReceiptHandle"])


def token_for(ring: KeyRing, subject: Subject = SUBJECT) -> str:
    return UnsubscribeHeaders(ring).token(subject)


def test_get_confirms_post_suppresses_once_and_records_one_event(stack: Stack, env: None) -> None:
    drain_events(stack)
    token = token_for(stack.ring)
    page = function.handler(url_event("GET", token), Context())
    assert page["statusCode"] == 200 and '<form method="post"' in page["body"]
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert suppression_item(stack, "acme", "ann@example.org") is None
    assert drain_events(stack) == []

    # A browser's form post arrives base64-encoded from a function URL.
    done = function.handler(url_event("POST", token, body=b"List-Unsubscribe=One-Click",
                                      base64_body=True), Context())
    assert done["statusCode"] == 200 and "Unsubscribed" in done["body"]
    item = suppression_item(stack, "acme", "ann@example.org")
    assert item is not None
    assert (item["reason"]["S"], item["source"]["S"]) == (
        "unsubscribe", "one-click (RFC 8058), message m-42")
    (event,) = drain_events(stack)
    assert (event["event"], event["id"], event["rcpt"], event["tenant"], event["campaign"]) == (
        "unsubscribed", "m-42", "Ann@Example.org", "acme", "dec")

    # A mailbox provider's one-click POST, sent again: nothing changes twice.
    again = function.handler(url_event("POST", token, body=b"List-Unsubscribe=One-Click"),
                             Context())
    assert again["statusCode"] == 200
    assert drain_events(stack) == []
    assert suppression_item(stack, "acme", "ann@example.org") == item


def test_a_forged_token_is_refused_and_changes_nothing(stack: Stack, env: None) -> None:
    drain_events(stack)
    forged = token_for(rotated(None, now=time.time() - 60),
                       Subject(tenant="acme", campaign=None, message_id="m-1",
                               recipient="bob@example.org"))
    response = function.handler(url_event("POST", forged, body=b"List-Unsubscribe=One-Click"),
                                Context())
    assert response["statusCode"] == 403 and "not valid" in response["body"]
    assert suppression_item(stack, "acme", "bob@example.org") is None
    assert drain_events(stack) == []


def test_a_rotated_ring_still_honours_links_signed_before(stack: Stack, env: None) -> None:
    drain_events(stack)
    old = token_for(stack.ring, Subject(tenant=None, campaign=None, message_id="m-7",
                                        recipient="carol@example.org"))
    secrets = client(stack.server.endpoint, "secretsmanager")
    ring = rotate_secret(secrets, SECRET, now=time.time())
    assert [k.id for k in ring.keys] == [1, 2]
    response = function.handler(url_event("POST", old, body=b"List-Unsubscribe=One-Click"),
                                Context())
    assert response["statusCode"] == 200
    assert suppression_item(stack, "*", "carol@example.org") is not None
    new = token_for(ring, Subject(tenant=None, campaign=None, message_id="m-8",
                                  recipient="dave@example.org"))
    assert new != old
    response = function.handler(url_event("POST", new, body=b"List-Unsubscribe=One-Click"),
                                Context())
    assert response["statusCode"] == 200
    assert suppression_item(stack, "*", "dave@example.org") is not None
    assert [(e["event"], e["rcpt"]) for e in drain_events(stack)] == [
        ("unsubscribed", "carol@example.org"), ("unsubscribed", "dave@example.org")]
