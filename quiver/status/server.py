"""The sender's status endpoint: `GET /healthz` and `GET /status` over HTTP.

It runs on a thread of its own, not on the event loop, so that a wedged loop is
still reported: /healthz answers from the loop's last tick (liveness.py), 200 or
503. ECS's container health check calls it (cdk/sender_service.py), and a task
whose loop stalls is replaced. /status asks the loop for a snapshot and waits at
most STATUS_TIMEOUT for it: a loop that cannot answer gets a 503, not a hung
request.

Small and bounded: GET only, no body read, a request line of at most
MAX_REQUEST_LINE bytes and at most MAX_HEADERS headers, SOCKET_TIMEOUT per
connection, and at most MAX_CONCURRENT requests at once (more are closed
unanswered), so no client can hold the health check hostage for long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from quiver.status.liveness import LoopBeat

log = logging.getLogger("quiver.status")

DEFAULT_PORT = 8080
STATUS_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
MAX_REQUEST_LINE = 1024
MAX_HEADERS = 32
MAX_CONCURRENT = 8

Snapshot = Callable[[], dict[str, Any]]


class StatusBindError(RuntimeError):
    """The status endpoint's address cannot be served (in use, not an address here)."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = SOCKET_TIMEOUT
    protocol_version = "HTTP/1.0"

    def handle_one_request(self) -> None:
        # The stdlib reads up to 64 KiB lines and 100 headers: bound them lower.
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(line) > MAX_REQUEST_LINE:
            self.requestline = ""
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self._json(414, {"error": f"request line over {MAX_REQUEST_LINE} bytes"})
            return
        if not line:
            self.close_connection = True
            return
        self.raw_requestline = line
        if not self.parse_request():
            return
        if len(self.headers) > MAX_HEADERS:
            self._json(431, {"error": f"over {MAX_HEADERS} headers"})
            return
        if self.command != "GET":
            self._json(405, {"error": "GET only"})
            return
        self._get()

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            verdict = self.server.beat.verdict()
            self._json(200 if verdict.healthy else 503, {
                "healthy": verdict.healthy,
                "loop_age": None if verdict.age is None else round(verdict.age, 3),
                "reason": verdict.reason})
        elif path == "/status":
            try:
                snapshot = self.server.snapshot_on_loop()
            except Exception as exc:  # the loop's failure is the answer, not a crash
                reason = ("the event loop did not answer within "
                          f"{STATUS_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else str(exc))
                self._json(503, {"error": reason})
            else:
                self._json(200, snapshot)
        else:
            self._json(404, {"error": "not found: GET /healthz or /status"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # A health check every few seconds would drown the sender's log.
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], *, beat: LoopBeat, snapshot: Snapshot) -> None:
        self.beat = beat
        self.snapshot = snapshot
        self.loop: asyncio.AbstractEventLoop | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own looks up the host's FQDN: a DNS call at start for nothing.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: closed unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def snapshot_on_loop(self) -> dict[str, Any]:
        loop = self.loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the sender is not running")
        result: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            if result.set_running_or_notify_cancel():
                try:
                    result.set_result(self.snapshot())
                except Exception as exc:
                    result.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return result.result(timeout=STATUS_TIMEOUT)
        except concurrent.futures.TimeoutError:
            result.cancel()  # a late loop then skips the work
            raise TimeoutError from None


class StatusServer:
    """Binds at construction (a port in use is an error at start, not later), serves
    once `start` gives it the loop to watch."""

    def __init__(self, *, host: str, port: int, beat: LoopBeat, snapshot: Snapshot) -> None:
        self.beat = beat
        try:
            self._httpd = _Server((host, port), beat=beat, snapshot=snapshot)
        except OSError as exc:
            raise StatusBindError(f"cannot serve the status endpoint on {host}:{port}: "
                                  f"{exc.strerror or exc}") from exc
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._httpd.loop = loop
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="status-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    async def run(self, stop: asyncio.Event) -> None:
        """The sender's service: serve, tick the loop's heartbeat until `stop`, close."""
        self.start(asyncio.get_running_loop())
        host, port = self.address
        log.info("status on http://%s:%d (/healthz, /status)", host, port)
        try:
            await self.beat.run(stop)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.close)
