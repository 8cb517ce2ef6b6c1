"""Entry point of the local moto server: `python -m quiver.devstack.moto_main ARGS`.

moto's SQS reads the clock through `unix_time_millis()`, which builds two UTC
datetimes per call (about 11 µs), and calls it twice per queued message, in
flight or not, every time it lists a queue's visible messages, several times per
ReceiveMessage. At a depth of 400 a ReceiveMessage took 300-500 ms, so the
emulator, not the sender, paced every test that queued a few hundred messages.
`time.time()` is the same value; with it that call takes a few milliseconds.

DynamoDB applies each write atomically: a conditional update that passes its
condition changes the item it tested. moto's server answers requests on threads,
and its UpdateItem tests the condition, parses the update and then applies it with
no lock, so on a busy machine two conditional ADDs could both pass against the same
value (a warm-up cap of 50 gave 58). DynamoDB's requests therefore go through one
lock here; the other services (SQS long polls among them) stay concurrent.

SQS hands a message to one receiver until its visibility timeout runs out. moto's
ReceiveMessage tests each message's visibility and then marks it received with no
lock, so two senders polling at once could both get the same message (two
deliveries, and two final events for one recipient: 501 for 500 messages). Its
DeleteMessage rebuilds the queue's list unlocked, so a message sent meanwhile
could vanish. Each queue's scans, deletions and visibility changes therefore hold
that queue's own lock (the one its sends take); a long poll waits outside it.
Everything else is moto's own server, unchanged.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

# The X-Amz-Target of DynamoDB's JSON API (DynamoDB_20120810.UpdateItem, ...).
_DYNAMODB_TARGET = "DynamoDB_"


def _clock(original: Callable[..., float], scale: float) -> Callable[..., float]:
    def now(dt: datetime | None = None) -> float:
        return time.time() * scale if dt is None else original(dt)

    return now


def patch_clock() -> bool:
    """Swap moto's SQS clock reads for time.time(); False if this moto lacks them."""
    from moto.sqs import models

    originals = (getattr(models, "unix_time", None), getattr(models, "unix_time_millis", None))
    if originals[0] is None or originals[1] is None:
        return False
    models.unix_time = _clock(originals[0], 1.0)  # type: ignore[attr-defined]
    models.unix_time_millis = _clock(originals[1], 1000.0)  # type: ignore[attr-defined]
    return True


def serialize_dynamodb() -> None:
    """One DynamoDB request at a time in this server, as DynamoDB's writes are atomic."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original = DomainDispatcherApplication.__call__
    lock = threading.Lock()

    def call(self: DomainDispatcherApplication, environ: dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(_DYNAMODB_TARGET):
            body: Iterable[bytes] = original(self, environ, start_response)
            return body
        with lock:
            # The body is built inside the view; joined here, it is all under the lock.
            return [b"".join(original(self, environ, start_response))]

    DomainDispatcherApplication.__call__ = call  # type: ignore[method-assign]


def serialize_sqs_queues() -> None:
    """A queue's receives, deletions and visibility changes one at a time, as SQS's are
    atomic; long polls still wait side by side."""
    from moto.sqs.models import Queue, SQSBackend

    receive_once = SQSBackend.receive_message
    delete = Queue.delete_message
    change = SQSBackend.change_message_visibility

    def receive(self: SQSBackend, queue_name: str, count: int, wait_seconds_timeout: int,
                visibility_timeout: int, message_attribute_names: list[str] | None = None,
                ) -> list[Any]:
        queue = self.get_queue(queue_name)
        deadline = time.time() + wait_seconds_timeout
        while True:
            with queue._messages_lock:
                # A wait of 0 makes moto's receive one scan that never blocks.
                found = receive_once(self, queue_name, count, 0, visibility_timeout,
                                     message_attribute_names)
            remaining = deadline - time.time()
            if found or remaining <= 0:
                return found
            queue.wait_for_messages(min(1.0, remaining))  # type: ignore[arg-type]

    def delete_locked(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            delete(self, receipt_handle)

    def change_locked(self: SQSBackend, queue_name: str, receipt_handle: str,
                      visibility_timeout: int) -> None:
        with self.get_queue(queue_name)._messages_lock:
            change(self, queue_name, receipt_handle, visibility_timeout)

    SQSBackend.receive_message = receive  # type: ignore[method-assign]
    Queue.delete_message = delete_locked  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = change_locked  # type: ignore[method-assign]


def main() -> None:
    from moto import server

    if not patch_clock():
        # Unpatched, every test that queues a few hundred messages would be paced by
        # the emulator again, and nothing would say so.
        sys.exit("moto_main: this moto has no moto.sqs.models.unix_time/unix_time_millis "
                 "to patch; pin a moto version that has them (see pyproject.toml)")
    serialize_dynamodb()
    serialize_sqs_queues()
    server.main(sys.argv[1:])


if __name__ == "__main__":
    main()
