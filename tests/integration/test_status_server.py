"""The status endpoint on loopback with a real event loop in a thread: /healthz answers
from its own thread, so a loop blocked by a blocking call is reported (503) and a
released one recovers (200); /status comes from the loop, and a blocked loop gets a
503 after the timeout, not a hung request. Bounds: unknown paths, other methods, an
oversized request line."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from quiver.status.liveness import LoopBeat
from quiver.status.server import (
    MAX_REQUEST_LINE,
    STATUS_TIMEOUT,
    StatusBindError,
    StatusServer,
)

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # a bound on a stuck test, not a speed


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LoopThread:
    """A real asyncio loop on its own thread, running the server's service."""

    def __init__(self, server: StatusServer) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self._server = server
        self._thread = threading.Thread(target=self._run, name="loop", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop = asyncio.Event()
            self._ready.set()
            await self._server.run(self.stop)

        self.loop.run_until_complete(main())
        self.loop.close()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        assert self._ready.wait(DEADLINE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()

    def block(self) -> threading.Event:
        """Block the loop with a blocking call until the returned event is set."""
        entered, release = threading.Event(), threading.Event()

        def blocking() -> None:
            entered.set()
            release.wait(DEADLINE)

        self.loop.call_soon_threadsafe(blocking)
        assert entered.wait(DEADLINE)
        return release


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else {}
    finally:
        conn.close()


def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def served() -> Iterator[tuple[StatusServer, LoopThread, Clock]]:
    clock = Clock(1000.0)
    beat = LoopBeat(clock=clock, interval=0.02, stall=30.0)
    snapshots = {"n": 0}

    def snapshot() -> dict[str, Any]:
        snapshots["n"] += 1
        return {"v": 1, "task": "t", "taken": snapshots["n"],
                "on_loop": threading.current_thread().name}

    server = StatusServer(host="127.0.0.1", port=0, beat=beat, snapshot=snapshot)
    with LoopThread(server) as loop:
        until(lambda: beat.last is not None)
        yield server, loop, clock


def test_healthz_goes_503_while_the_loop_is_blocked_and_recovers(
        served: tuple[StatusServer, LoopThread, Clock]) -> None:
    server, loop, clock = served
    port = server.address[1]
    status, body = get(port, "/healthz")
    assert status == 200 and body["healthy"] is True

    release = loop.block()
    try:
        # No tick can happen now; time passes on the injected clock past the bound.
        clock.now += 31.0
        status, body = get(port, "/healthz")
        assert status == 503
        assert body["healthy"] is False
        assert body["reason"].startswith("the event loop last ticked 31.0 s ago")
        started = time.monotonic()
        status, body = get(port, "/status")
        waited = time.monotonic() - started
        assert status == 503
        assert body == {"error": f"the event loop did not answer within {STATUS_TIMEOUT:g} s"}
        print(f"/status on a blocked loop answered 503 after {waited:.2f} s")
    finally:
        release.set()
    until(lambda: get(port, "/healthz")[0] == 200)
    status, body = get(port, "/status")
    assert status == 200
    assert body["on_loop"] == "loop"  # taken on the loop's thread, not the server's


def test_only_get_of_the_two_paths_and_bounded_requests(
        served: tuple[StatusServer, LoopThread, Clock]) -> None:
    server, _, _ = served
    port = server.address[1]
    assert get(port, "/nowhere") == (404, {"error": "not found: GET /healthz or /status"})
    assert get(port, "/healthz?verbose=1")[0] == 200
    assert get(port, "/status", method="POST")[0] == 405
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw:
        raw.sendall(b"GET /" + b"a" * (MAX_REQUEST_LINE + 10) + b" HTTP/1.0\r\n\r\n")
        answer = raw.recv(1024)
    assert answer.startswith(b"HTTP/1.0 414")


def test_a_port_in_use_is_an_error_at_construction() -> None:
    beat = LoopBeat()
    first = StatusServer(host="127.0.0.1", port=0, beat=beat, snapshot=dict)
    try:
        with pytest.raises(StatusBindError, match=r"cannot serve the status endpoint on "
                           r"127\.0\.0\.1:\d+: Address already in use"):
            StatusServer(host="127.0.0.1", port=first.address[1], beat=beat, snapshot=dict)
    finally:
        first.close()
