"""Private-key operations on worker threads, so the event loop serves I/O meanwhile.

An RSA-2048 signature is most of a message's CPU (about 0.35 ms here), and the
C code that computes it releases the GIL. On the event loop thread it would stall
every connection for that long per message; on a worker thread it runs beside
the loop, on another core when the task has one. Only the private-key operation
goes to the thread: canonicalisation and hashing stay on the loop (they hold the
GIL, and would only contend for it), so a worker holds the GIL just to start and
end each operation.

Results come back in batches: a finishing worker wakes the loop only if no
wake-up is pending already, so under load many signatures cost one wake-up.

Taking the GIL back after each signature is not free, though: beside the busy
loop it cost the sender more CPU than the thread saved, so the sender signs in
worker processes by default (quiver.dkim.processes); `signing_for` picks what
policy says.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from quiver.dkim.processes import ProcessSigningPool
from quiver.dkim.signer import DkimSigner

_Job = tuple[Callable[[bytes], bytes], bytes, asyncio.Future[bytes], asyncio.AbstractEventLoop]
_Result = tuple[asyncio.Future[bytes], bytes | None, BaseException | None]


class Signing(Protocol):
    """Where the sender's private-key operations run: threads (SigningPool) or worker
    processes (quiver.dkim.processes.ProcessSigningPool)."""

    async def sign(self, signer: DkimSigner, data: bytes) -> bytes:
        """`signer.key_sign(data)`, off the event loop."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class SigningPool:
    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError("a signing pool needs at least one thread")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Finished operations per event loop, not yet handed over. A loop with an entry
        # here has a wake-up scheduled; one is scheduled when its list is started.
        self._done: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"dkim-sign-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, operation: Callable[[bytes], bytes], data: bytes) -> bytes:
        """`operation(data)` on a worker thread."""
        if self._closed:
            # Nothing would ever answer: the threads are gone or going.
            raise RuntimeError("the signing pool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._jobs.put((operation, data, future, loop))
        return await future

    async def sign(self, signer: DkimSigner, data: bytes) -> bytes:
        return await self.run(signer.key_sign, data)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            operation, data, future, loop = job
            result: bytes | None = None
            error: BaseException | None = None
            try:
                result = operation(data)
            except BaseException as exc:  # handed to the awaiting coroutine
                error = exc
            with self._lock:
                pending = self._done.setdefault(loop, [])
                wake = not pending
                pending.append((future, result, error))
            if wake:
                try:
                    loop.call_soon_threadsafe(self._deliver, loop)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    with self._lock:
                        self._done.pop(loop, None)

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            done = self._done.pop(loop, [])
        for future, result, error in done:
            if future.done():
                continue  # cancelled while it was signed
            if error is not None:
                future.set_exception(error)
            else:
                assert result is not None
                future.set_result(result)

    def close(self) -> None:
        """Stop the threads once the queued operations are done (does not wait)."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)

    async def aclose(self) -> None:
        """`close`, as the sender's shutdown hooks call it."""
        self.close()


def signing_for(*, processes: int, threads: int) -> Signing | None:
    """Where policy says the private-key operations run (delivery.signing_processes,
    delivery.signing_threads); None: on the event loop."""
    if processes:
        return ProcessSigningPool(processes)
    return SigningPool(threads) if threads else None
