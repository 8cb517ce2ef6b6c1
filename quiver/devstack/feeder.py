"""Mail enqueued on a thread while a drill or a benchmark watches the local stack:
the thread, its client on the stack's outbound queue, and the error it ended with,
kept for `check` rather than lost on the thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from quiver.client import QuiverClient
from quiver.devstack.stack import LocalStack


class FeederThread:
    """Runs `feed(client, stop)` on a thread until it returns or `stop` is set."""

    def __init__(self, stack: LocalStack, *, name: str,
                 feed: Callable[[QuiverClient, threading.Event], None]) -> None:
        self._stack = stack
        self._name = name
        self._feed = feed
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deployment = self._stack.deployment
        assert deployment is not None
        client = QuiverClient(sqs=self._stack.client("sqs"), s3=self._stack.client("s3"),
                              queue_url=deployment.outbound_queue_url,
                              spill_bucket=deployment.spill_bucket)
        try:
            self._feed(client, self.stopping)
        except BaseException as exc:  # reported by `check`, not lost on the thread
            self.error = exc

    def check(self, error: type[Exception]) -> None:
        """Raise `error` if the feed failed."""
        if self.error is not None:
            raise error(f"the feeder failed: {self.error!r}")

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
