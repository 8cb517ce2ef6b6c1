"""The local moto server hands a queue's message to one receiver at a time (SQS's
receive is atomic; moto's is not, and two senders once got the same message), while
a long poll that found nothing waits without holding the queue."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from quiver.devstack import moto_main

WAIT = 30.0  # a bound on a stuck test, not a speed


class FakeQueue:
    def __init__(self) -> None:
        self._messages_lock = threading.Condition()
        self.waiting = threading.Event()
        self.wake = threading.Event()

    def wait_for_messages(self, timeout: float) -> None:
        self.waiting.set()
        assert self.wake.wait(WAIT)


class ScanProbe:
    """Stands in for moto's receive: records who scans at once and with which wait;
    the first scan stays inside until released, and scans find `found`."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.waits: list[int] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.found: list[Any] = ["message"]
        self.lock = threading.Lock()

    def __call__(self, backend: Any, queue_name: str, count: int, wait: int,
                 visibility: int, names: list[str] | None = None) -> list[Any]:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.waits.append(wait)
        self.entered.release()
        assert self.release.wait(WAIT)
        with self.lock:
            self.inside -= 1
        return list(self.found)


class FakeBackend:
    def __init__(self) -> None:
        self.queue = FakeQueue()

    def get_queue(self, name: str) -> FakeQueue:
        return self.queue


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScanProbe]:
    probe = ScanProbe()
    monkeypatch.setattr(SQSBackend, "receive_message", probe)
    # Saved here so that the fixture's undo puts moto's own methods back.
    monkeypatch.setattr(Queue, "delete_message", Queue.delete_message)
    monkeypatch.setattr(SQSBackend, "change_message_visibility",
                        SQSBackend.change_message_visibility)
    moto_main.serialize_sqs_queues()
    yield probe
    probe.release.set()


def receive_in_thread(backend: FakeBackend, wait: int, out: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(SQSBackend.receive_message(
        backend, "q", 10, wait, 30)))  # type: ignore[arg-type]
    thread.start()
    return thread


def test_two_receives_never_scan_a_queue_at_once(probe: ScanProbe) -> None:
    backend, results = FakeBackend(), []
    threads = [receive_in_thread(backend, 20, results) for _ in range(2)]
    assert probe.entered.acquire(timeout=WAIT)  # the first scans
    # The second must not scan while the first is inside: give it the chance.
    assert not probe.entered.acquire(timeout=0.5)
    probe.release.set()
    for thread in threads:
        thread.join(WAIT)
    assert probe.most == 1
    assert probe.waits == [0, 0]  # each scan is moto's non-blocking one
    assert results == [["message"], ["message"]]


def test_a_long_poll_waits_outside_the_queue_lock(probe: ScanProbe) -> None:
    backend, results = FakeBackend(), []
    probe.found = []
    probe.release.set()
    first = receive_in_thread(backend, 20, results)
    assert backend.queue.waiting.wait(WAIT)  # found nothing, now waiting for a message
    # The lock is free while it waits: another thread takes it at once.
    assert backend.queue._messages_lock.acquire(timeout=WAIT)
    backend.queue._messages_lock.release()
    probe.found = ["message"]
    backend.queue.wake.set()
    first.join(WAIT)
    assert results == [["message"]]


def test_moto_backend_still_receives_sends_and_deletes(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    for cls, name in ((SQSBackend, "receive_message"), (Queue, "delete_message"),
                      (SQSBackend, "change_message_visibility")):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    moto_main.serialize_sqs_queues()
    backend = sqs_backends["123456789012"]["us-east-1"]
    name = f"lock-{uuid.uuid4().hex}"
    backend.create_queue(name)
    try:
        results: list[Any] = []
        poller = threading.Thread(target=lambda: results.append(
            backend.receive_message(name, 10, 20, 30)))
        poller.start()
        backend.send_message(name, "hello")  # wakes the long poll
        poller.join(WAIT)
        assert [m.body for m in results[0]] == ["hello"]
        handle = results[0][0].receipt_handle
        backend.change_message_visibility(name, handle, 0)
        again = backend.receive_message(name, 10, 0, 30)
        assert [m.body for m in again] == ["hello"]
        backend.delete_message(name, again[0].receipt_handle)
        assert backend.receive_message(name, 10, 0, 30) == []
    finally:
        backend.delete_queue(name)
