"""Private-key operations in worker processes beside the event loop (quiver.dkim.worker).

Why processes: an RSA-2048 signature on a thread releases the GIL and must take
it back from the busy event loop, and that handoff cost the sender more CPU than
the thread saved: on the 2-core development machine (`bench/sender_cpu.py`, the
three ways alternating, three rounds) a signing thread cost a median 1,545 µs of
CPU per message, signing on the loop 1,289, a worker process 1,449 (its CPU
counted), and the worker delivered the most: 1,116 messages a second against 862
on a thread and 559 on the loop (README, Benchmarks).

The event loop writes each job to a worker's stdin as a frame, never blocking (a
full pipe keeps the rest until the worker reads it), and reads the signatures
back when the worker's stdout is readable. A worker that dies, fails a job, says
something outside the protocol, or leaves a job unanswered for STALL_AFTER
seconds is killed and its unanswered jobs are signed on the event loop: no
message waits on a worker that is gone or stuck. The next job starts a new worker
after a pause that doubles while new workers die without answering anything (1 s
to a minute), so a worker that cannot start costs a log line per pause, and until
one runs the loop signs.

Keys travel once per worker, as PEM over the pipe: the worker is a child of the
sender on the same host, in the same task. The pool remembers up to MAX_KEYS
signers; a key ring reloaded more often than that starts the workers' keys over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, NamedTuple, cast

from quiver.dkim.signer import DkimSigner
from quiver.dkim.worker import (
    FAILED,
    FORGET,
    KEY,
    KEY_ID,
    MAX_FRAME,
    READ_SIZE,
    SIGN,
    SIGNED,
    FrameError,
    frame,
    frames,
)

log = logging.getLogger(__name__)

MAX_KEYS = 256
FIRST_PAUSE = 1.0
MAX_PAUSE = 60.0
# A signature takes about a millisecond: a worker that has left a job unanswered
# this long is stopped (SIGSTOP, a frozen cgroup, a deadlock) and is replaced.
STALL_AFTER = 30.0
# The package's parent directory: the worker finds quiver where it is installed,
# and else (run from a checkout) here. Appended to its path, after the standard
# library; `-P` keeps the working directory off it (the image's is /tmp).
_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER = ("import sys; sys.path.append(sys.argv[1]); from quiver.dkim.worker import main; "
           "sys.exit(main())")


class _Job(NamedTuple):
    future: asyncio.Future[bytes]
    signer: DkimSigner
    data: bytes
    sent_at: float


class _Worker:
    """One worker process and what is in flight with it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.stdin = cast(IO[bytes], process.stdin)
        self.stdout = cast(IO[bytes], process.stdout)
        self.write_fd = self.stdin.fileno()
        self.read_fd = self.stdout.fileno()
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)
        self.unwritten = bytearray()
        self.received = bytearray()
        self.jobs: dict[int, _Job] = {}
        self.keys: set[int] = set()
        self.answered = 0
        self.input_closed = False
        self.lost = False
        self.watch: asyncio.TimerHandle | None = None  # the stall check, while jobs wait


class ProcessSigningPool:
    """`sign` runs `signer.key_sign(data)` in one of `processes` worker processes."""

    def __init__(
        self, processes: int, *, clock: Callable[[], float] = time.monotonic,
        command: Sequence[str] | None = None, stall_after: float = STALL_AFTER,
    ) -> None:
        if processes < 1:
            raise ValueError("a signing pool needs at least one process")
        self._size = processes
        self._clock = clock
        self._stall_after = stall_after
        self._command = list(command or (sys.executable, "-P", "-c", _WORKER, _ROOT))
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key_ids: dict[DkimSigner, int] = {}
        self._next_key = 0
        self._next_job = 0
        self._closed = False
        self._started_at: float | None = None
        self._pause = FIRST_PAUSE
        self._gone: set[asyncio.Future[int]] = set()  # reaping of workers that ended
        self._ended: asyncio.Future[None] | None = None  # aclose: the last worker ended
        # How many workers were started, and signatures made on the loop for want of one.
        self.started = 0
        self.signed_on_loop = 0

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids (benchmarks count their CPU)."""
        return [w.process.pid for w in self._workers]

    async def sign(self, signer: DkimSigner, data: bytes) -> bytes:
        if self._closed:
            raise RuntimeError("the signing pool is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a signing pool serves the event loop it started on")
        if len(data) + KEY_ID.size > MAX_FRAME:
            # Signed header fields this large are a hostile message's: not worth a
            # worker's protocol error (and its replacement).
            return self._on_loop(signer, data)
        # The key first: making room for it may write to the workers, and may find
        # one gone.
        key_id = self._key_id(signer)
        worker = self._worker()
        if worker is None:
            return self._on_loop(signer, data)
        key = b""
        if key_id not in worker.keys:
            worker.keys.add(key_id)
            key = frame(KEY, key_id, signer.algorithm.encode("ascii") + b"\n" + signer.key_pem())
        self._next_job = job_id = (self._next_job + 1) & 0xFFFFFFFF
        future: asyncio.Future[bytes] = loop.create_future()
        # Held before it is written: if the write finds the worker gone, the job is
        # among those `_lost` signs here.
        worker.jobs[job_id] = _Job(future, signer, data, self._clock())
        self._send(worker, key + frame(SIGN, job_id, KEY_ID.pack(key_id) + data))
        if worker.watch is None and not worker.lost:
            worker.watch = loop.call_later(self._stall_after, self._check_stall, worker)
        return await future

    def _on_loop(self, signer: DkimSigner, data: bytes) -> bytes:
        self.signed_on_loop += 1
        return signer.key_sign(data)

    def close(self) -> None:
        """Stop taking jobs; each worker ends once it has answered what it was sent
        (what it was not sent is signed on the loop). Does not wait."""
        self._closed = True
        loop = self._loop
        if loop is not None and (loop.is_closed() or not loop.is_running()):
            # No loop will read their answers or their end: end them here. (Nobody
            # awaits their jobs any more either; the loop that did is gone.)
            for worker in self._workers:
                worker.lost = True
                if not loop.is_closed():
                    self._unwatch(loop, worker)
                for stream in (worker.stdin, worker.stdout):
                    stream.close()
                try:
                    worker.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()
            self._workers.clear()
            return
        for worker in list(self._workers):
            self._close_input(worker)

    async def aclose(self, timeout: float = 2.0) -> None:
        """`close`, then wait (at most `timeout`) for the workers to end; kill the rest."""
        self.close()
        if self._workers:
            if self._ended is None or self._ended.done():
                self._ended = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._ended), timeout)
            except TimeoutError:
                for worker in list(self._workers):
                    self._lost(worker, "did not end after its input closed")
        if self._gone:
            await asyncio.gather(*self._gone, return_exceptions=True)

    # -- workers -----------------------------------------------------------------

    def _worker(self) -> _Worker | None:
        """The running worker with the fewest jobs, after starting any that are due."""
        if len(self._workers) < self._size:
            now = self._clock()
            if self._started_at is None or now - self._started_at >= self._pause:
                self._started_at = now
                while len(self._workers) < self._size and self._start():
                    pass
        if not self._workers:
            return None
        return min(self._workers, key=lambda w: len(w.jobs))

    def _start(self) -> bool:
        try:
            process = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                # Its own session: a Ctrl-C at a terminal reaches the sender, which
                # drains (still signing), not the worker. It ends when stdin closes.
                start_new_session=True)
        except OSError as exc:
            log.error("cannot start a DKIM signing worker (%s): signing on the event loop",
                      exc)
            return False
        worker = _Worker(process)
        assert self._loop is not None
        self._loop.add_reader(worker.read_fd, self._readable, worker)
        self._workers.append(worker)
        self.started += 1
        log.info("DKIM signing worker %d started", process.pid)
        return True

    def _key_id(self, signer: DkimSigner) -> int:
        key_id = self._key_ids.get(signer)
        if key_id is not None:
            return key_id
        if len(self._key_ids) >= MAX_KEYS:
            # Many more key rings than a sender ever holds at once: start over.
            self._key_ids.clear()
            for worker in list(self._workers):  # a failed write drops the worker
                worker.keys.clear()
                self._send(worker, frame(FORGET, 0))
        self._next_key = key_id = (self._next_key + 1) & 0xFFFFFFFF
        self._key_ids[signer] = key_id
        return key_id

    def _send(self, worker: _Worker, data: bytes) -> None:
        if worker.input_closed or worker.lost:
            return  # its jobs are signed on the loop when it ends (or were)
        if worker.unwritten:
            worker.unwritten += data  # behind what waits for the pipe to drain
            return
        try:
            written = os.write(worker.write_fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._lost(worker, f"its input failed: {exc}")
            return
        if written < len(data):
            worker.unwritten += data[written:]
            assert self._loop is not None
            self._loop.add_writer(worker.write_fd, self._writable, worker)

    def _writable(self, worker: _Worker) -> None:
        try:
            written = os.write(worker.write_fd, worker.unwritten)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(worker, f"its input failed: {exc}")
            return
        del worker.unwritten[:written]
        if not worker.unwritten:
            assert self._loop is not None
            self._loop.remove_writer(worker.write_fd)
            if self._closed:
                self._close_input(worker)

    def _readable(self, worker: _Worker) -> None:
        while True:
            try:
                chunk = os.read(worker.read_fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(worker, f"its output failed: {exc}")
                return
            if not chunk:
                self._lost(worker, "ended" if worker.input_closed else "ended unasked")
                return
            worker.received += chunk
            try:
                answers = frames(worker.received)
            except FrameError as exc:
                self._lost(worker, str(exc))
                return
            for kind, job_id, payload in answers:
                job = worker.jobs.get(job_id) if kind in (SIGNED, FAILED) else None
                if job is None:
                    self._lost(worker, f"sent frame kind {kind} for job {job_id}, "
                                       "not the answer to a job it holds")
                    return
                if kind == FAILED:
                    # A signature over any bytes cannot fail for the message's sake:
                    # the worker and this pool disagree (about a key), or the worker
                    # is unwell. A new worker, and this job signed here.
                    self._lost(worker, "failed a job: "
                                       + payload.decode("utf-8", "replace")[:300])
                    return
                del worker.jobs[job_id]
                worker.answered += 1
                self._pause = FIRST_PAUSE  # workers start and work
                if not job.future.done():  # else its message was cancelled meanwhile
                    job.future.set_result(payload)

    def _check_stall(self, worker: _Worker) -> None:
        """Replace `worker` if its oldest unanswered job has waited too long."""
        worker.watch = None
        if worker.lost or not worker.jobs:
            return  # the next job watches again
        oldest = next(iter(worker.jobs.values())).sent_at  # answered jobs leave the dict
        waited = self._clock() - oldest
        if waited >= self._stall_after:
            self._lost(worker, f"left a job unanswered for {waited:.1f} s")
            return
        assert self._loop is not None
        worker.watch = self._loop.call_later(self._stall_after - waited, self._check_stall,
                                             worker)

    def _close_input(self, worker: _Worker) -> None:
        if worker.input_closed or worker.unwritten:
            return  # closed once what waits has been written (_writable)
        worker.input_closed = True
        worker.stdin.close()

    @staticmethod
    def _unwatch(loop: asyncio.AbstractEventLoop, worker: _Worker) -> None:
        """Take `worker`'s pipes and timer off the loop (before its pipes are closed)."""
        if worker.watch is not None:
            worker.watch.cancel()
            worker.watch = None
        loop.remove_reader(worker.read_fd)
        if worker.unwritten:
            loop.remove_writer(worker.write_fd)

    def _lost(self, worker: _Worker, why: str) -> None:
        """End `worker` for good; sign its unanswered jobs here."""
        if worker.lost:
            return
        worker.lost = True
        self._workers.remove(worker)
        loop = self._loop
        assert loop is not None
        self._unwatch(loop, worker)
        # Its state before its pipes close: a worker blocked reading its input exits
        # on the EOF that closing them sends, and would then read as one that exited
        # on its own (a stalled worker reported "exit 0" instead of "running, killed").
        code = worker.process.poll()
        for stream in (worker.stdin, worker.stdout):
            stream.close()
        pending = [job for job in worker.jobs.values() if not job.future.done()]
        worker.jobs.clear()
        if not (self._closed and worker.input_closed and not pending):
            if not worker.answered:
                self._pause = min(self._pause * 2, MAX_PAUSE)
            log.warning("DKIM signing worker %d %s (%s): %d signatures made on the event loop",
                        worker.process.pid, why,
                        "running, killed" if code is None else f"exit {code}", len(pending))
        # On the loop, one after another: a worker's end is rare, and the jobs it
        # held (at most the messages in flight) are signed at once, not lost.
        for job in pending:
            try:
                job.future.set_result(self._on_loop(job.signer, job.data))
            except Exception as exc:  # the message's own error, as signing inline would
                job.future.set_exception(exc)
        if code is None:
            worker.process.kill()
        try:
            # Reaped off the loop: a killed process may take a moment to be gone.
            reaped = loop.run_in_executor(None, worker.process.wait)
        except RuntimeError:  # the executor is shut down: Popen reaps it when collected
            pass
        else:
            self._gone.add(reaped)
            reaped.add_done_callback(self._gone.discard)
        if not self._workers and self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
