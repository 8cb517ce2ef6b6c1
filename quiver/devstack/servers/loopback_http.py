"""A small HTTP/1.1 server on loopback for the local stack's function endpoints.

In AWS a function URL or API Gateway carries requests to a Lambda; here this server,
on its own loop thread, hands each request (method, path, lower-cased headers, body)
to the same service code the handler calls. One request per connection, bounded in
head size, body size and time: it serves a developer, a test, the demo and the
bench on loopback, never the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

from quiver.devstack.loop_thread import LoopThread

MAX_HEAD = 16 * 1024
REQUEST_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

Answer = tuple[int, dict[str, str], bytes]
Handler = Callable[[str, str, Mapping[str, str], bytes], Awaitable[Answer]]


class LoopbackHttp:
    """Serves `handler(method, path, headers, body)` on `host`, a free port unless
    one is given; bodies over `max_body` get 413 unread."""

    def __init__(self, handler: Handler, *, name: str, max_body: int,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._max_body = max_body
        self._thread = LoopThread(name)
        self._server: asyncio.Server | None = None
        try:
            self.address: tuple[str, int] = self._thread.run(self._start(host, port),
                                                             timeout=STOP_TIMEOUT)
        except BaseException:
            self._thread.halt(timeout=STOP_TIMEOUT)
            raise

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    async def _start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
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

    async def _answer(self, reader: asyncio.StreamReader) -> Answer:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return plain(400, "not an HTTP/1.x request")
        method, target, _ = parts
        fields: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        length_text = fields.get("content-length", "0")
        if not length_text.isdigit():
            return plain(400, "bad Content-Length")
        length = int(length_text)
        if length > self._max_body:
            return plain(413, "body too large")
        body = await reader.readexactly(length) if length else b""
        return await self._handler(method, target.split("?", 1)[0], fields, body)


def plain(status: int, text: str) -> Answer:
    return status, {"Content-Type": "text/plain; charset=utf-8"}, text.encode("utf-8")
