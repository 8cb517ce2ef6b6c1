"""DKIM private-key operations in worker processes: the same signatures as on the loop,
and no message waits on a worker that died, hangs up or talks nonsense."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quiver.dkim.processes as processes
from quiver.dkim import DkimSigner, generate_private_key
from quiver.dkim.processes import ProcessSigningPool
from quiver.dkim.worker import (
    FAILED,
    FORGET,
    HEADER,
    KEY,
    KEY_ID,
    MAX_FRAME,
    SIGN,
    SIGNED,
    FrameError,
    Worker,
    frame,
    frames,
)


def signer(algorithm: str = "rsa-sha256", selector: str = "s1") -> DkimSigner:
    return DkimSigner.from_pem(domain="example.com", selector=selector, algorithm=algorithm,
                               pem=generate_private_key(algorithm))


RSA = signer()
ED = signer("ed25519-sha256", "e1")


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def python(code: str) -> list[str]:
    """A stand-in worker: a Python process running `code`."""
    return [sys.executable, "-c", code]


SILENT = python("import sys; sys.stdin.buffer.read()")  # reads everything, answers nothing
EXITS = python("import sys; sys.exit(3)")
DEAF = python("import time; time.sleep(600)")  # reads nothing at all


def event_loops() -> list[Callable[[Coroutine[Any, Any, None]], None]]:
    """asyncio's loop, and uvloop's (the sender's) where it is installed."""
    runners: list[Callable[[Coroutine[Any, Any, None]], None]] = [asyncio.run]
    try:
        import uvloop
    except ImportError:
        return runners
    return [*runners, uvloop.run]


def run(main: Coroutine[Any, Any, None],
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run) -> None:
    """`main` on `runner`'s loop; a regression that hangs fails here, not at the
    suite's timeout."""
    async def bounded() -> None:
        await asyncio.wait_for(main, 60)

    runner(bounded())


@pytest.mark.parametrize("runner", event_loops())
def test_workers_sign_exactly_as_the_loop_would(
        runner: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        pool = ProcessSigningPool(2)
        data = [b"signed header fields %d" % i for i in range(60)]
        got = await asyncio.gather(*(pool.sign(s, d) for d in data for s in (RSA, ED)))
        # RSASSA-PKCS1-v1_5 and Ed25519 are deterministic: equal bytes, not just valid.
        assert got == [s.key_sign(d) for d in data for s in (RSA, ED)]
        assert pool.started == 2 and len(pool.pids) == 2 and pool.signed_on_loop == 0
        workers = [w.process for w in pool._workers]
        await pool.aclose()
        assert pool.pids == [] and all(p.returncode == 0 for p in workers)
        with pytest.raises(RuntimeError, match="closed"):
            await pool.sign(RSA, b"late")

    run(main(), runner)


@pytest.mark.parametrize("runner", event_loops())
def test_jobs_larger_than_the_pipe_are_written_as_it_drains(
        runner: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1)
        data = [bytes([i]) * (1 << 20) for i in range(3)]  # 1 MiB each; a pipe holds 64 KiB
        got = await asyncio.gather(*(pool.sign(ED, d) for d in data))
        assert got == [ED.key_sign(d) for d in data] and pool.signed_on_loop == 0
        await pool.aclose()

    run(main(), runner)


def test_data_beyond_a_frame_is_signed_on_the_loop() -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1)
        data = b"h" * MAX_FRAME
        assert await pool.sign(RSA, data) == RSA.key_sign(data)
        assert pool.signed_on_loop == 1 and pool.started == 0  # no worker was bothered
        await pool.aclose()

    run(main())


def test_jobs_of_a_worker_that_dies_are_signed_on_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1, command=SILENT)
        jobs = [asyncio.ensure_future(pool.sign(RSA, b"m%d" % i)) for i in range(5)]
        await asyncio.sleep(0)  # the jobs are written to the worker, which never answers
        assert len(pool.pids) == 1 and not any(j.done() for j in jobs)
        os.kill(pool.pids[0], signal.SIGKILL)
        got = await asyncio.gather(*jobs)
        assert got == [RSA.key_sign(b"m%d" % i) for i in range(5)]
        assert pool.signed_on_loop == 5 and pool.pids == []
        await pool.aclose()

    with caplog.at_level(logging.WARNING, logger="quiver.dkim.processes"):
        run(main())
    assert "5 signatures made on the event loop" in caplog.text


def test_a_worker_that_cannot_run_is_retried_after_a_growing_pause() -> None:
    async def main() -> None:
        clock = Clock()
        pool = ProcessSigningPool(1, clock=clock, command=EXITS)
        assert await pool.sign(RSA, b"a") == RSA.key_sign(b"a")
        assert pool.started == 1 and pool.signed_on_loop == 1
        # It ended without answering anything: the next start waits 2 s, not 1.
        clock.now += 1.5
        assert await pool.sign(RSA, b"b") == RSA.key_sign(b"b")
        assert pool.started == 1 and pool.signed_on_loop == 2
        clock.now += 0.5
        assert await pool.sign(RSA, b"c") == RSA.key_sign(b"c")
        assert pool.started == 2
        await pool.aclose()

    run(main())


@pytest.mark.parametrize("answer", [
    frame(SIGNED, 999, b"x" * 256),  # a job it was not given
    HEADER.pack(SIGNED, 1, MAX_FRAME + 1),  # a frame longer than any answer
    frame(KEY, 1, b""),  # a kind no worker sends
])
def test_a_worker_that_breaks_the_protocol_is_dropped(answer: bytes) -> None:
    code = ("import os, sys; sys.stdin.buffer.raw.read(1); "
            f"os.write(1, {answer!r}); sys.stdin.buffer.read()")

    async def main() -> None:
        pool = ProcessSigningPool(1, command=python(code))
        assert await pool.sign(ED, b"data") == ED.key_sign(b"data")
        assert pool.signed_on_loop == 1 and pool.pids == []
        await pool.aclose()

    run(main())


def test_closing_lets_the_workers_answer_what_they_were_sent() -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1)
        jobs = [asyncio.ensure_future(pool.sign(RSA, b"j%d" % i)) for i in range(20)]
        await asyncio.sleep(0)
        await pool.aclose(timeout=50)  # however slow the machine: the answers come first
        assert [j.result() for j in jobs] == [RSA.key_sign(b"j%d" % i) for i in range(20)]
        assert pool.signed_on_loop == 0

    run(main())


def test_a_worker_that_does_not_end_is_killed() -> None:
    async def main() -> None:
        ignores_eof = python("import sys, time; sys.stdin.buffer.read(); time.sleep(600)")
        pool = ProcessSigningPool(1, command=ignores_eof)
        job = asyncio.ensure_future(pool.sign(RSA, b"x"))
        await asyncio.sleep(0)
        process = pool._workers[0].process
        await pool.aclose(timeout=0.2)
        assert job.result() == RSA.key_sign(b"x")  # signed on the loop when it was killed
        assert process.returncode == -signal.SIGKILL

    run(main())


def test_a_cancelled_job_does_not_disturb_the_others() -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1)
        first = asyncio.ensure_future(pool.sign(RSA, b"cancelled"))
        second = asyncio.ensure_future(pool.sign(RSA, b"kept"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == RSA.key_sign(b"kept")
        assert pool.signed_on_loop == 0
        await pool.aclose()

    run(main())


def test_keys_start_over_past_the_cache_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "MAX_KEYS", 2)
    signers = [RSA, ED, signer("ed25519-sha256", "e2")]

    async def main() -> None:
        pool = ProcessSigningPool(1)
        for _ in range(2):
            for s in signers:
                assert await pool.sign(s, b"d") == s.key_sign(b"d")
        assert pool.signed_on_loop == 0
        await pool.aclose()

    run(main())


def test_a_pool_serves_one_event_loop() -> None:
    pool = ProcessSigningPool(1)

    async def once() -> bytes:
        return await pool.sign(ED, b"d")

    asyncio.run(once())
    (worker,) = [w.process for w in pool._workers]
    with pytest.raises(RuntimeError, match="the event loop it started on"):
        asyncio.run(once())
    pool.close()  # with its loop gone: the worker is ended and reaped here
    assert pool.pids == [] and worker.returncode == 0


# -- the worker's side, in this process ----------------------------------------------


def key_frame(key_id: int, s: DkimSigner) -> bytes:
    return frame(KEY, key_id, s.algorithm.encode() + b"\n" + s.key_pem())


def answer(worker: Worker, data: bytes) -> list[tuple[int, int, bytes]]:
    replies = b"".join(worker.answer(*f) for f in frames(bytearray(data)))
    return frames(bytearray(replies))


def test_the_worker_reports_each_failure_to_its_job() -> None:
    worker = Worker()
    got = answer(worker, b"".join([
        frame(SIGN, 1, KEY_ID.pack(7) + b"d"),  # no such key
        frame(KEY, 8, b"rsa-sha256\nnot a key"),
        frame(SIGN, 2, KEY_ID.pack(8) + b"d"),
        key_frame(9, ED),
        frame(SIGN, 3, KEY_ID.pack(9) + b"d"),
        frame(FORGET, 0),
        frame(SIGN, 4, KEY_ID.pack(9) + b"d"),
    ]))
    assert [(kind, job) for kind, job, _ in got] == [
        (FAILED, 1), (FAILED, 2), (SIGNED, 3), (FAILED, 4)]
    assert got[0][2] == b"no key 7 was sent"
    assert got[1][2].startswith(b"the key did not load: not a PEM private key")
    assert got[2][2] == ED.key_sign(b"d")
    with pytest.raises(FrameError, match="unexpected frame kind 2"):
        worker.answer(SIGN, 5, b"ab")  # too short to name a key


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([KEY, SIGN, FORGET, SIGNED]),
                          st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(1, 64), max_size=10))
def test_frames_come_back_whole_however_the_bytes_are_cut(
        sent: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    data = b"".join(frame(*f) for f in sent)
    buffer, got, at = bytearray(), [], 0
    for size in [*cuts, len(data)]:
        buffer += data[at:at + size]
        at += size
        got.extend(frames(buffer))
    assert got == sent and not buffer


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_frames_or_a_frame_error(data: bytes) -> None:
    buffer = bytearray(data)
    try:
        for kind, number, payload in frames(buffer):
            assert 0 <= kind < 256 and 0 <= number < 2**32 and len(payload) <= MAX_FRAME
    except FrameError as exc:
        assert "at most" in str(exc)
    else:
        assert len(buffer) < HEADER.size or len(buffer) < HEADER.size + HEADER.unpack_from(
            buffer)[2]


def test_a_failed_answer_replaces_the_worker_and_the_job_is_signed_on_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    """A signature over any bytes cannot fail for the message's sake: a FAILED answer
    means the worker is unwell, never that the message is refused."""
    code = ("import os, sys; sys.path.append(" + repr(processes._ROOT) + "); "
            "from quiver.dkim.worker import frame, FAILED; sys.stdin.buffer.raw.read(1); "
            "os.write(1, frame(FAILED, 1, b'RuntimeError: boom')); sys.stdin.buffer.read()")

    async def main() -> None:
        pool = ProcessSigningPool(1, command=python(code))
        assert await pool.sign(RSA, b"d") == RSA.key_sign(b"d")
        assert pool.signed_on_loop == 1 and pool.pids == []
        await pool.aclose()

    with caplog.at_level(logging.WARNING, logger="quiver.dkim.processes"):
        run(main())
    assert "failed a job: RuntimeError: boom" in caplog.text


def test_a_worker_that_leaves_a_job_unanswered_is_replaced(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        # SILENT never answers: however long the check takes to come, the job waited
        # longer than this.
        pool = ProcessSigningPool(1, command=SILENT, stall_after=0.05)
        assert await pool.sign(RSA, b"d") == RSA.key_sign(b"d")
        assert pool.signed_on_loop == 1 and pool.pids == []
        await pool.aclose()

    with caplog.at_level(logging.WARNING, logger="quiver.dkim.processes"):
        run(main())
    assert "left a job unanswered for" in caplog.text and "running, killed" in caplog.text


class _ExitsOnClose:
    """A worker's stdin whose close() returns only once the worker has exited on the
    EOF: the fastest a worker blocked reading can end, made certain."""

    def __init__(self, worker: Any) -> None:
        self._stream = worker.stdin
        self._process = worker.process

    def close(self) -> None:
        self._stream.close()
        self._process.wait(timeout=60)


def test_a_stalled_worker_reads_as_running_however_soon_it_ends_on_its_pipes_closing(
        caplog: pytest.LogCaptureFixture) -> None:
    """Its state is read before its pipes close: closing them ends a worker blocked on
    its input, which must not then pass for one that exited on its own ("exit 0")."""
    async def main() -> None:
        pool = ProcessSigningPool(1, command=SILENT, stall_after=0.05)
        job = asyncio.ensure_future(pool.sign(RSA, b"d"))
        for _ in range(100):  # the task starts its worker at its first step
            if pool._workers:
                break
            await asyncio.sleep(0)
        worker = pool._workers[0]
        worker.stdin = _ExitsOnClose(worker)
        assert await job == RSA.key_sign(b"d")
        assert pool.signed_on_loop == 1 and worker.process.returncode is not None
        await pool.aclose()

    with caplog.at_level(logging.WARNING, logger="quiver.dkim.processes"):
        run(main())
    assert "left a job unanswered for" in caplog.text and "running, killed" in caplog.text
    assert "exit 0" not in caplog.text


def test_making_room_for_a_key_finds_a_dead_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is emptied (a FORGET to each worker) while a worker has died unseen:
    the write fails, and the job goes to a new worker, not to the dead one."""
    monkeypatch.setattr(processes, "MAX_KEYS", 1)

    async def main() -> None:
        clock = Clock()
        pool = ProcessSigningPool(1, clock=clock)
        assert await pool.sign(RSA, b"a") == RSA.key_sign(b"a")
        process = pool._workers[0].process
        process.kill()
        process.wait()  # dead, and the loop has not yet read its end
        clock.now += 1  # the next worker is due (the first one answered: 1 s pause)
        assert await pool.sign(ED, b"b") == ED.key_sign(b"b")
        assert pool.started == 2 and pool.signed_on_loop == 0
        await pool.aclose()

    run(main())


def test_jobs_still_unwritten_at_close_are_signed_on_the_loop() -> None:
    async def main() -> None:
        pool = ProcessSigningPool(1, command=DEAF)
        job = asyncio.ensure_future(pool.sign(ED, b"x" * (256 << 10)))  # past a full pipe
        await asyncio.sleep(0)
        assert pool._workers[0].unwritten  # the worker reads nothing
        await pool.aclose(timeout=0.1)
        assert job.result() == ED.key_sign(b"x" * (256 << 10)) and pool.signed_on_loop == 1

    run(main())
