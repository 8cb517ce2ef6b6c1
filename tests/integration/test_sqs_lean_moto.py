"""The lean SQS client against moto's server, and against scripted HTTP servers.

moto's server (werkzeug) closes the connection after every answer, so three
ways in are tested: straight to moto (the server says `Connection: close`
every time), through a keep-alive front (an HTTP/1.1 server on loopback that
forwards each request to moto, counts client connections, and can close them
on cue, as SQS and load balancers do), and through the same front over TLS.
A scripted server answers with exact bytes for the faults moto cannot make.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from quiver.devstack.moto_server import FAKE_CREDENTIALS, client, create_resources, start_moto
from quiver.devstack.processes import free_port
from quiver.devstack.servers.tls import issue_cert
from quiver.settings import Deployment
from quiver.storage.base import Outgoing, StorageError
from quiver.storage.sqs_lean import LeanSqsClient, LeanSqsQueue, lean_queue

pytestmark = pytest.mark.integration

REGION = "us-east-1"
CREDS = Credentials(FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
# Guards so a broken client fails the test instead of hanging it; never a
# statement about speed.
GUARD = 30.0


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Deployment]]:
    server = start_moto(log_dir=tmp_path_factory.mktemp("moto-lean"))
    try:
        yield server.endpoint, create_resources(server.endpoint)
    finally:
        server.stop()


@pytest.fixture
def queue_url(moto: tuple[str, Deployment]) -> str:
    """A fresh queue per test, so counts never leak between tests."""
    endpoint, _ = moto
    url: str = client(endpoint, "sqs").create_queue(
        QueueName=f"lean-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    return url


def depth(endpoint: str, url: str) -> tuple[int, int]:
    attrs = client(endpoint, "sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


async def _cancel(tasks: set[asyncio.Task[Any]]) -> None:
    """Stop connection handlers; they return quietly when cancelled (see _quiet)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _quiet(serve: Any) -> Any:
    """A connection handler that ends without an exception when cancelled: asyncio's
    stream server logs a cancelled handler as an error."""
    async def wrapper(self: Any, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            await serve(self, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
    return wrapper


async def until(condition: Any, *, timeout: float = GUARD) -> None:
    """Wait for what the event loop will make true; the guard only catches a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class KeepAliveFront:
    """HTTP/1.1 keep-alive server forwarding each request to moto on its own connection."""

    def __init__(self, upstream: str, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.tls = tls
        self.connections = 0
        self.live = 0  # client connections open now
        self.requests = 0
        self.close_after_answer = False
        self.drop_reused = 0  # drop this many requests that arrive on a used connection
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, moto_url: str) -> str:
        scheme = "https" if self.tls else "http"
        path = moto_url.split("/", 3)[3]
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await _cancel(self._tasks)
            await self._server.wait_closed()

    @_quiet
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.live += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    body = await reader.readexactly(_content_length(head))
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                if served and self.drop_reused:
                    self.drop_reused -= 1
                    return  # closed without an answer: the race a reused connection risks
                self.requests += 1
                writer.write(await self._forward(head + body))
                await writer.drain()
                served += 1
                if self.close_after_answer:
                    return
        finally:
            writer.transport.abort()
            self.live -= 1

    async def _forward(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read()  # moto closes after its answer
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = b"HTTP/1.1 " + lines[0].split(None, 1)[1]
        kept = [line for line in lines[1:] if not line.lower().startswith(b"connection:")]
        return b"\r\n".join([status, *kept]) + b"\r\n\r\n" + body


@pytest.fixture
async def front(moto: tuple[str, Deployment]) -> AsyncIterator[KeepAliveFront]:
    server = KeepAliveFront(moto[0])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("lean-tls")
    cert, key = issue_cert(ca_dir=base / "ca", hostnames=["localhost"], ips=["127.0.0.1"],
                           dir=base / "certs")
    return base / "ca" / "ca.crt", cert, key


@pytest.fixture(params=["direct", "keepalive", "tls"])
async def way_in(
    request: pytest.FixtureRequest, moto: tuple[str, Deployment], queue_url: str,
    tls_files: tuple[Path, Path, Path],
) -> AsyncIterator[tuple[LeanSqsQueue, KeepAliveFront | None]]:
    """(a lean queue on a fresh queue, the front it goes through or None)."""
    if request.param == "direct":
        queue = lean_queue(url=queue_url, region=REGION, credentials=CREDS)
        yield queue, None
        await queue.close()
        return
    tls = None
    client_context = None
    if request.param == "tls":
        ca, cert, key = tls_files
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=str(ca))
    server = KeepAliveFront(moto[0], tls)
    await server.start()
    sqs = LeanSqsClient(region=REGION, credentials=CREDS, ssl_context=client_context)
    queue = sqs.queue(server.url(queue_url))
    yield queue, server
    await queue.close()
    await server.stop()


async def receive_all(queue: LeanSqsQueue, want: int, *, visibility: int = 60) -> list[Any]:
    got: list[Any] = []
    for _ in range(20):  # bounded: moto hands out at most 10 a call
        if len(got) >= want:
            break
        got += await queue.receive(max_messages=10, wait_seconds=1, visibility=visibility)
    return got


async def test_send_receive_change_visibility_delete_round_trip(
    way_in: tuple[LeanSqsQueue, KeepAliveFront | None], moto: tuple[str, Deployment],
    queue_url: str,
) -> None:
    queue, front = way_in
    before = time.time()
    await queue.send([Outgoing(body=json.dumps({"n": i, "text": "é✓"}), attributes={"k": "v"})
                      for i in range(15)])
    got = await receive_all(queue, 15)
    assert sorted(json.loads(m.body)["n"] for m in got) == list(range(15))
    assert {json.loads(m.body)["text"] for m in got} == {"é✓"}
    assert all(m.receive_count == 1 for m in got)
    assert all(before - 5 < m.sent_at < time.time() + 5 for m in got)
    assert depth(moto[0], queue_url) == (0, 15)

    # Visible again at once: the next receive counts a second delivery.
    await queue.change_visibility([m.receipt for m in got[:4]], seconds=0)
    again = await receive_all(queue, 4)
    assert sorted(m.message_id for m in again) == sorted(m.message_id for m in got[:4])
    assert all(m.receive_count == 2 for m in again)

    await queue.delete([m.receipt for m in got[4:]] + [m.receipt for m in again])
    assert depth(moto[0], queue_url) == (0, 0)
    assert await queue.receive(max_messages=10, wait_seconds=0, visibility=30) == []
    if front is not None:
        # Sequential calls over a kept-alive front share one connection.
        assert front.connections == 1
        assert queue.client.connections_opened == 1


async def test_long_poll_returns_when_a_message_arrives(
    front: KeepAliveFront, queue_url: str,
) -> None:
    sqs = LeanSqsClient(region=REGION, credentials=CREDS)
    queue = sqs.queue(front.url(queue_url))
    started = time.monotonic()
    poll = asyncio.create_task(queue.receive(max_messages=10, wait_seconds=20, visibility=30))
    await until(lambda: front.requests == 1)  # the poll is on its way to moto
    assert not poll.done()
    await queue.send([Outgoing(body="wake up")])
    got = await asyncio.wait_for(poll, GUARD)
    assert [m.body for m in got] == ["wake up"]
    # The poll ended on the message, not on its 20 s wait.
    assert time.monotonic() - started < 20
    await sqs.close()


async def test_a_200_kb_body_round_trips(queue_url: str) -> None:
    queue = lean_queue(url=queue_url, region=REGION, credentials=CREDS)
    body = "".join(chr(ord("a") + i % 26) for i in range(200_000))
    await queue.send([Outgoing(body=body), Outgoing(body="small")])
    got = await receive_all(queue, 2)
    assert sorted(len(m.body) for m in got) == [5, 200_000]
    assert next(m.body for m in got if len(m.body) > 5) == body
    await queue.delete([m.receipt for m in got])
    await queue.close()


async def test_invalid_receipt_handle_raises_naming_the_code(
    queue_url: str, moto: tuple[str, Deployment],
) -> None:
    queue = lean_queue(url=queue_url, region=REGION, credentials=CREDS)
    await queue.send([Outgoing(body="keep me")])
    [good] = await receive_all(queue, 1)
    with pytest.raises(StorageError, match="DeleteMessageBatch: ReceiptHandleIsInvalid"):
        await queue.delete([good.receipt, "not-a-receipt-handle"])
    with pytest.raises(StorageError, match="ChangeMessageVisibilityBatch: ReceiptHandleIsInvalid"):
        await queue.change_visibility(["not-a-receipt-handle"], seconds=0)
    await queue.close()


async def test_missing_queue_raises_at_once(
    front: KeepAliveFront, queue_url: str,
) -> None:
    queue = LeanSqsClient(region=REGION, credentials=CREDS).queue(
        front.url(queue_url) + "-missing")
    with pytest.raises(StorageError, match="ReceiveMessage: QueueDoesNotExist") as caught:
        await queue.receive(max_messages=1, wait_seconds=0, visibility=30)
    assert getattr(caught.value, "code", None) == "QueueDoesNotExist"
    assert front.requests == 1  # a sender fault is not retried
    await queue.close()


async def test_keep_alive_one_connection_for_many_calls(
    front: KeepAliveFront, queue_url: str,
) -> None:
    queue = lean_queue(url=front.url(queue_url), region=REGION, credentials=CREDS)
    for i in range(10):
        await queue.send([Outgoing(body=f"m{i}")])
    got = await receive_all(queue, 10)
    for m in got:
        await queue.delete([m.receipt])
    assert len(got) == 10
    assert front.requests >= 20
    assert front.connections == 1
    assert queue.client.connections_opened == 1
    await queue.close()


async def test_server_closing_between_requests_reconnects(
    front: KeepAliveFront, queue_url: str,
) -> None:
    queue = lean_queue(url=front.url(queue_url), region=REGION, credentials=CREDS)
    await queue.send([Outgoing(body="one")])
    # The server closes idle connections after answering (an idle timeout).
    front.close_after_answer = True
    await queue.send([Outgoing(body="two")])
    await until(lambda: front.live == 0)  # the server closed the connection
    await queue.send([Outgoing(body="three")])
    assert front.connections == 2
    front.close_after_answer = False
    # The close races the next request: the server drops it unanswered on the
    # reused connection; the client sends it again, once, on a fresh one.
    await queue.send([Outgoing(body="four")])
    connections = front.connections
    front.drop_reused = 1
    await queue.send([Outgoing(body="five")])
    assert front.connections == connections + 1
    got = await receive_all(queue, 5)
    assert sorted(m.body for m in got) == ["five", "four", "one", "three", "two"]
    await queue.close()


async def test_connection_close_from_moto_is_honoured(queue_url: str) -> None:
    # moto's server answers `Connection: close` every time: never reused, never stuck.
    queue = lean_queue(url=queue_url, region=REGION, credentials=CREDS)
    for i in range(5):
        await queue.send([Outgoing(body=f"m{i}")])
    assert queue.client.connections_opened == 5
    assert len(await receive_all(queue, 5)) == 5
    await queue.close()


async def test_cancelled_call_frees_its_slot_and_drops_its_connection(
    front: KeepAliveFront, queue_url: str,
) -> None:
    sqs = LeanSqsClient(region=REGION, credentials=CREDS, max_connections=1)
    queue = sqs.queue(front.url(queue_url))
    # visibility 0: the abandoned poll still runs in moto and may take the
    # message sent below; it must not hide it.
    waiting = asyncio.create_task(queue.receive(max_messages=1, wait_seconds=3, visibility=0))
    await until(lambda: front.requests == 1)  # the poll is under way
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The one slot is free again; the half-used connection was not put back.
    await asyncio.wait_for(queue.send([Outgoing(body="after")]), GUARD)
    got = await receive_all(queue, 1)
    assert [m.body for m in got] == ["after"]
    assert sqs.connections_opened == 2
    await sqs.close()


async def test_tls_with_an_untrusted_certificate_is_refused(
    moto: tuple[str, Deployment], queue_url: str, tls_files: tuple[Path, Path, Path],
) -> None:
    _, cert, key = tls_files
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = KeepAliveFront(moto[0], tls)
    await server.start()
    # The system trust store does not know the local CA.
    queue = lean_queue(url=server.url(queue_url), region=REGION, credentials=CREDS)
    with pytest.raises(StorageError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await asyncio.wait_for(
            queue.receive(max_messages=1, wait_seconds=0, visibility=30), GUARD)
    assert server.requests == 0
    await queue.close()
    await server.stop()


# --- a scripted server: exact bytes for the faults moto cannot make ---------


def answer(status: int, body: bytes, *, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


SILENT = b""  # read the request, answer nothing
HANG_UP = b"hang up"  # read the request, close the connection without answering
THEN_CLOSE = b"then close:"  # prefix: answer with the rest, then close the connection


class Scripted:
    """Answers requests in order from a script; records each request's action and JSON."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await _cancel(self._tasks)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/123456789012/scripted"

    @_quiet
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(head))
                target = next(line for line in head.split(b"\r\n")
                              if line.lower().startswith(b"x-amz-target:"))
                action = target.split(b".", 1)[1].decode()
                self.requests.append((action, json.loads(body)))
                reply = self.script.pop(0) if self.script else SILENT
                if reply == SILENT:
                    await asyncio.sleep(GUARD)
                    return
                if reply == HANG_UP:
                    return
                if reply.startswith(THEN_CLOSE):
                    writer.write(reply.removeprefix(THEN_CLOSE))
                    writer.close()
                    await writer.wait_closed()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.transport.abort()


def scripted_queue(server: Scripted, **kwargs: Any) -> LeanSqsQueue:
    return LeanSqsClient(region=REGION, credentials=CREDS, **kwargs).queue(server.url)


OK_BATCH = json.dumps({"Successful": [], "Failed": []}).encode()


async def test_server_faults_are_retried_then_succeed() -> None:
    async with Scripted([
        answer(500, b'{"__type": "InternalFailure"}'),
        answer(400, b'{"__type": "com.amazonaws.sqs#RequestThrottled", "message": "slow"}'),
        answer(200, OK_BATCH),
    ]) as server:
        queue = scripted_queue(server)
        await queue.delete(["r1"])
        assert [a for a, _ in server.requests] == ["DeleteMessageBatch"] * 3
        assert server.connections == 1  # errors with a body keep the connection


async def test_a_hang_up_on_a_reused_connection_costs_no_attempt() -> None:
    # Two server faults use two of the three attempts on one kept-alive
    # connection; the third finds it closed under it and is resent, once, on a
    # fresh connection, without spending an attempt.
    busy = answer(503, b'{"__type": "ServiceUnavailable"}')
    async with Scripted([busy, busy, HANG_UP, answer(200, b"{}")]) as server:
        queue = scripted_queue(server)
        assert await queue.receive(max_messages=1, wait_seconds=0, visibility=1) == []
        assert len(server.requests) == 4
        assert server.connections == 2

    # A fresh connection that hangs up is a fault like any other: it costs an attempt.
    async with Scripted([HANG_UP] * 3) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match=r"closed before the response.*after 3 tries"):
            await queue.receive(max_messages=1, wait_seconds=0, visibility=1)
        assert (len(server.requests), server.connections) == (3, 3)


async def test_sender_faults_raise_at_once() -> None:
    async with Scripted([
        answer(400, b'{"__type": "com.amazonaws.sqs#InvalidParameterValue", "message": "no"}'),
    ]) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match="SendMessageBatch: InvalidParameterValue: no"):
            await queue.send([Outgoing(body="x")])
        assert len(server.requests) == 1


async def test_persistent_server_faults_raise_after_three_tries() -> None:
    async with Scripted([answer(503, b"<html>unavailable</html>")] * 3) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match=r"HTTP503.*after 3 tries") as caught:
            await queue.receive(max_messages=10, wait_seconds=0, visibility=30)
        assert len(server.requests) == 3
        assert getattr(caught.value, "code", None) == "HTTP503"


async def test_failed_entries_are_retried_alone_and_sender_faults_raise() -> None:
    failed_one = json.dumps({"Successful": [{"Id": "0"}, {"Id": "2"}], "Failed": [
        {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "later"}]}).encode()
    async with Scripted([answer(200, failed_one), answer(200, OK_BATCH)]) as server:
        queue = scripted_queue(server)
        await queue.change_visibility(["a", "b", "c"], seconds=7)
        first, second = (body["Entries"] for _, body in server.requests)
        assert [e["ReceiptHandle"] for e in first] == ["a", "b", "c"]
        assert second == [{"Id": "1", "ReceiptHandle": "b", "VisibilityTimeout": 7}]

    async with Scripted([answer(200, failed_one)] * 3) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match="1 entries failed after 3 tries"):
            await queue.delete(["a", "b", "c"])

    fault = json.dumps({"Failed": [{"Id": "0", "SenderFault": True,
                                    "Code": "InvalidMessageContents", "Message": "bad char"}]})
    fault = fault.encode()
    async with Scripted([answer(200, fault)]) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match="SendMessageBatch: InvalidMessageContents"):
            await queue.send([Outgoing(body="x")])
        assert len(server.requests) == 1


async def test_batches_split_at_ten_entries() -> None:
    async with Scripted([answer(200, OK_BATCH)] * 3) as server:
        queue = scripted_queue(server)
        await queue.delete([f"r{i}" for i in range(25)])
        assert [len(body["Entries"]) for _, body in server.requests] == [10, 10, 5]
        assert server.requests[2][1]["Entries"][0] == {"Id": "0", "ReceiptHandle": "r20"}


async def test_every_chunk_is_tried_when_one_fails() -> None:
    stale = json.dumps({"Failed": [{"Id": "3", "SenderFault": True,
                                    "Code": "ReceiptHandleIsInvalid", "Message": "stale"}]})
    async with Scripted([answer(200, stale.encode()), answer(200, OK_BATCH),
                         answer(200, OK_BATCH)]) as server:
        queue = scripted_queue(server)
        with pytest.raises(StorageError, match="DeleteMessageBatch: ReceiptHandleIsInvalid"):
            await queue.delete([f"r{i}" for i in range(25)])
        # The stale handle in the first ten did not keep the other fifteen.
        assert [len(body["Entries"]) for _, body in server.requests] == [10, 10, 5]


async def test_chunked_answers_are_read() -> None:
    payload = json.dumps({"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "b" * 50,
                                        "Attributes": {"ApproximateReceiveCount": "4"}}]}).encode()
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(payload[i:i + 7]), payload[i:i + 7])
                          for i in range(0, len(payload), 7))
               + b"0\r\nX-Trailer: t\r\n\r\n")
    async with Scripted([chunked, answer(200, b"{}")]) as server:
        queue = scripted_queue(server)
        [message] = await queue.receive(max_messages=1, wait_seconds=0, visibility=1)
        assert (message.body, message.receive_count) == ("b" * 50, 4)
        assert await queue.receive(max_messages=1, wait_seconds=0, visibility=1) == []
        assert server.connections == 1


async def test_interim_and_close_delimited_answers() -> None:
    async with Scripted([
        b"HTTP/1.1 100 Continue\r\n\r\n" + answer(200, b"{}"),
        THEN_CLOSE + b"HTTP/1.0 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n\r\n{}",
        answer(200, b"{}"),
    ]) as server:
        queue = scripted_queue(server)
        for _ in range(3):
            assert await queue.receive(max_messages=1, wait_seconds=0, visibility=1) == []
        # The interim answer did not end the exchange; the close-delimited one did.
        assert (len(server.requests), server.connections) == (3, 2)


async def test_connection_close_header_is_honoured() -> None:
    async with Scripted([answer(200, b"{}", extra="Connection: close\r\n"),
                         answer(200, b"{}")]) as server:
        queue = scripted_queue(server)
        for _ in range(2):
            assert await queue.receive(max_messages=1, wait_seconds=0, visibility=1) == []
        assert server.connections == 2


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",  # over the response limit
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # short body, then EOF
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",  # head over the limit
    answer(200, b"<not json>"),
])
async def test_malformed_answers_raise_storage_error(reply: bytes) -> None:
    async with Scripted([reply] * 3) as server:
        queue = scripted_queue(server, read_margin=0.5)
        with pytest.raises(StorageError):
            await asyncio.wait_for(
                queue.receive(max_messages=1, wait_seconds=0, visibility=1), GUARD)


async def test_a_silent_server_times_out_within_bounds() -> None:
    async with Scripted([]) as server:
        queue = scripted_queue(server, read_margin=0.3)
        expected = r"ReceiveMessage: no answer within 0.3 s \(after 3 tries\)"
        with pytest.raises(StorageError, match=expected):
            await asyncio.wait_for(
                queue.receive(max_messages=1, wait_seconds=0, visibility=1), GUARD)
        assert len(server.requests) == 3


async def test_nothing_listening_raises_storage_error() -> None:
    port = free_port()
    queue = lean_queue(url=f"http://127.0.0.1:{port}/1/q", region=REGION, credentials=CREDS)
    with pytest.raises(StorageError, match="cannot connect"):
        await asyncio.wait_for(queue.delete(["r"]), GUARD)
