"""An asyncio event loop in a daemon thread, for the local servers run in-process.

Tests and the local stack drive these servers from synchronous code; their own
loop keeps them off the caller's loop, and a bounded stop never hangs a test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        """Run `coro` on the loop and wait for its result (TimeoutError past `timeout`)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def halt(self, *, timeout: float) -> None:
        """Stop the loop and join the thread; the loop is closed if the thread ended."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():
            self.loop.close()
