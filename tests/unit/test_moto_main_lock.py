"""The local moto server answers DynamoDB one request at a time (its conditional
writes must be atomic, as DynamoDB's are) and everything else concurrently."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

from quiver.devstack import moto_main

WAIT = 30.0  # a bound on a stuck test, not a speed


class Probe:
    """Stands in for moto's dispatch: records who is inside, and holds the first
    caller inside until released."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, app: Any, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.entered.release()
        assert self.release.wait(WAIT)
        with self.lock:
            self.inside -= 1
        return [b"{", b"}"]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    probe = Probe()
    monkeypatch.setattr(DomainDispatcherApplication, "__call__", probe)
    moto_main.serialize_dynamodb()
    yield probe
    probe.release.set()


def two_requests(target: str) -> list[threading.Thread]:
    app = object.__new__(DomainDispatcherApplication)
    environ = {"HTTP_X_AMZ_TARGET": target}
    threads = [threading.Thread(target=lambda: DomainDispatcherApplication.__call__(
        app, environ, lambda *_: None)) for _ in range(2)]
    for thread in threads:
        thread.start()
    return threads


def test_dynamodb_requests_wait_for_each_other(probe: Probe) -> None:
    threads = two_requests("DynamoDB_20120810.UpdateItem")
    assert probe.entered.acquire(timeout=WAIT)  # the first is inside
    # The second must not enter while the first is inside: give it the chance.
    assert not probe.entered.acquire(timeout=0.5)
    probe.release.set()
    for thread in threads:
        thread.join(WAIT)
    assert probe.most == 1


def test_other_services_stay_concurrent(probe: Probe) -> None:
    threads = two_requests("AmazonSQS.ReceiveMessage")
    assert probe.entered.acquire(timeout=WAIT) and probe.entered.acquire(timeout=WAIT)
    assert probe.most == 2  # both inside at once: a long poll blocks nobody
    probe.release.set()
    for thread in threads:
        thread.join(WAIT)


def test_the_body_is_whole_under_the_lock(probe: Probe) -> None:
    probe.release.set()
    app = object.__new__(DomainDispatcherApplication)
    body = DomainDispatcherApplication.__call__(
        app, {"HTTP_X_AMZ_TARGET": "DynamoDB_20120810.GetItem"}, lambda *_: None)
    assert list(body) == [b"{}"]
