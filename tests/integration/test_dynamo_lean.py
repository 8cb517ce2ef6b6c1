"""The lean DynamoDB client's failure paths against real local HTTP servers: throttling
is retried, a client error is not, a dead endpoint is a StorageError within its
bounded tries. (Its answers on moto's server: tests/integration/test_storage_contract.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from botocore.credentials import Credentials

from quiver.devstack.processes import free_port
from quiver.storage.base import StorageError
from quiver.storage.dynamo_lean import LeanDynamoClient

pytestmark = pytest.mark.integration
CREDENTIALS = Credentials("AKIDEXAMPLE", "secret", "session-token")


class Scripted:
    """An HTTP/1.1 server answering each request with the next (status, JSON body)."""

    def __init__(self, answers: list[tuple[int, dict]]) -> None:
        self.answers = answers
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
            body = await reader.readexactly(int(headers["content-length"]))
            self.requests.append((headers, body))
            status, answer = self.answers.pop(0)
            data = json.dumps(answer).encode()
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
            await writer.drain()


@pytest.fixture
async def serve() -> AsyncIterator:
    servers = []

    async def start(answers: list[tuple[int, dict]]) -> tuple[Scripted, LeanDynamoClient]:
        scripted = Scripted(answers)
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        servers.append(server)
        servers.append(scripted)
        port = server.sockets[0].getsockname()[1]
        lean = LeanDynamoClient(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                                credentials=CREDENTIALS)
        servers.append(lean)
        return scripted, lean

    yield start
    for item in servers:
        if isinstance(item, LeanDynamoClient):
            await item.close()
        elif isinstance(item, Scripted):
            for writer in item.writers:
                writer.close()
        else:
            item.close()
            await item.wait_closed()


async def test_throttling_is_retried_and_the_request_is_signed(serve) -> None:
    throttled = {"__type": "com.amazonaws.dynamodb.v20120810#"
                           "ProvisionedThroughputExceededException", "message": "slow down"}
    scripted, lean = await serve([(400, throttled), (200, {"Responses": {"t": []}})])
    answer = await lean.call("BatchGetItem", {"RequestItems": {"t": {"Keys": []}}})
    assert answer == {"Responses": {"t": []}}
    assert len(scripted.requests) == 2
    headers, body = scripted.requests[0]
    assert headers["x-amz-target"] == "DynamoDB_20120810.BatchGetItem"
    assert headers["x-amz-security-token"] == "session-token"
    assert headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/us-east-1/dynamodb/aws4_request" in headers["authorization"]
    assert json.loads(body) == {"RequestItems": {"t": {"Keys": []}}}
    # The retry rode the same kept-alive connection.
    assert lean.connections_opened == 1
    assert len(scripted.writers) == 1


async def test_a_client_error_is_raised_at_once(serve) -> None:
    missing = {"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException",
               "message": "Requested resource not found"}
    scripted, lean = await serve([(400, missing)])
    with pytest.raises(StorageError, match="ResourceNotFoundException: Requested resource"):
        await lean.call("BatchGetItem", {"RequestItems": {}})
    assert len(scripted.requests) == 1


async def test_a_dead_endpoint_fails_within_its_tries() -> None:
    lean = LeanDynamoClient(endpoint_url=f"http://127.0.0.1:{free_port('127.0.0.1')}",
                            region="us-east-1", credentials=CREDENTIALS)
    try:
        with pytest.raises(StorageError, match=r"BatchWriteItem: .*cannot connect.*3 tries"):
            await asyncio.wait_for(lean.call("BatchWriteItem", {"RequestItems": {}}), 60)
    finally:
        await lean.close()


def test_bad_endpoints_and_missing_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        LeanDynamoClient(endpoint_url="dynamodb.us-east-1", region="us-east-1",
                         credentials=CREDENTIALS)
    with pytest.raises(ValueError, match="no AWS credentials"):
        LeanDynamoClient(endpoint_url="https://dynamodb.us-east-1.amazonaws.com",
                         region="us-east-1", credentials=None)
