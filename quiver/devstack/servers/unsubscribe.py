"""The one-click unsubscribe endpoint on loopback HTTP, for the local stack.

In AWS a function URL carries requests to the Lambda; here a small HTTP/1.1
server on its own loop thread hands them to the same `Unsubscriber`, with the
same stores (DynamoDB and SQS on moto's server) and a key ring file. One
request per connection, bounded in size and time: it serves a developer's
browser, a test and the demo, never the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from pathlib import Path

from quiver.devstack import moto_server
from quiver.devstack.loop_thread import LoopThread
from quiver.returnpath.keys import load_key_ring
from quiver.returnpath.refresh import CachedRing
from quiver.settings import Deployment
from quiver.storage.aws import BotoEventSink
from quiver.storage.dynamo import DynamoSuppression
from quiver.unsubscribe import Unsubscriber
from quiver.unsubscribe.service import MAX_BODY

MAX_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
PATH_PREFIX = "/u/"


def local_unsubscriber(*, endpoint: str, deployment: Deployment, key_file: Path) -> Unsubscriber:
    """The Unsubscriber the Lambda would build, on moto's server at `endpoint` and the
    key ring in `key_file` (re-read as the Lambda re-reads its secret)."""
    return Unsubscriber(
        keys=CachedRing(lambda: load_key_ring(key_file=str(key_file))),
        suppression=DynamoSuppression(moto_server.client(endpoint, "dynamodb"),
                                      deployment.suppression_table),
        events=BotoEventSink(moto_server.client(endpoint, "sqs"), deployment.events_queue_url),
    )


class UnsubscribeHttp:
    """Serves GET and POST /u/<token> on `host`, a free port unless one is given."""

    def __init__(self, unsubscriber: Unsubscriber, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._unsubscriber = unsubscriber
        self._thread = LoopThread("quiver-local-unsubscribe")
        self._server: asyncio.Server | None = None
        try:
            self.address: tuple[str, int] = self._thread.run(self._start(host, port),
                                                             timeout=STOP_TIMEOUT)
        except BaseException:
            self._thread.halt(timeout=STOP_TIMEOUT)
            raise

    @property
    def url(self) -> str:
        """The base URL a policy's `url` names (local_only policies may use http)."""
        host, port = self.address
        return f"http://{host}:{port}{PATH_PREFIX}"

    async def _start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=MAX_HEAD)
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            self._thread.run(close(), timeout=STOP_TIMEOUT)
        self._thread.halt(timeout=STOP_TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, headers, body = await self._answer(reader)
            head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                    *(f"{k}: {v}" for k, v in headers.items()),
                    f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(head).encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass  # a client that is too slow, too big or gone gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain(400, "not an HTTP/1.x request")
        method, target, _ = parts
        fields: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if not path.startswith(PATH_PREFIX):
            return _plain(404, "not found")
        length_text = fields.get("content-length", "0")
        if not length_text.isdigit():
            return _plain(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            return _plain(413, "body too large")
        body = await reader.readexactly(length) if length else b""
        response = await self._unsubscriber.handle(
            method=method, token=path[len(PATH_PREFIX):].rstrip("/"), body=body,
            content_type=fields.get("content-type"))
        return response.status, dict(response.headers), response.body.encode("utf-8")


def _plain(status: int, text: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode("utf-8")
