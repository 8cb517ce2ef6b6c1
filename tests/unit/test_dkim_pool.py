"""The signing pool: private-key operations on worker threads, results back on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from quiver.dkim import DkimSigner, generate_private_key
from quiver.dkim.pool import SigningPool

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def signer() -> DkimSigner:
    return DkimSigner.from_pem(domain="example.com", selector="s", algorithm="rsa-sha256",
                               pem=generate_private_key("rsa-sha256"))


def test_prepare_key_sign_finish_is_sign(signer: DkimSigner) -> None:
    # RSA PKCS#1 v1.5 is deterministic: the split steps give the same bytes.
    unsigned = signer.prepare(MESSAGE, timestamp=1_700_000_000)
    assert signer.finish(unsigned, signer.key_sign(unsigned.data)) == signer.sign(
        MESSAGE, timestamp=1_700_000_000)


async def test_operations_run_on_a_worker_thread_and_come_back_in_order(
        signer: DkimSigner) -> None:
    pool = SigningPool(2)
    seen: set[str] = set()

    def op(data: bytes) -> bytes:
        seen.add(threading.current_thread().name)
        return signer.key_sign(data)

    try:
        prepared = [signer.prepare(MESSAGE + b"%d\r\n" % i, timestamp=1) for i in range(40)]
        results = await asyncio.gather(*(pool.run(op, u.data) for u in prepared))
    finally:
        pool.close()
    assert results == [signer.key_sign(u.data) for u in prepared]
    assert seen and all(name.startswith("dkim-sign-") for name in seen)


async def test_an_error_reaches_the_awaiting_coroutine() -> None:
    pool = SigningPool(1)

    def broken(data: bytes) -> bytes:
        raise ValueError(f"cannot sign {len(data)} bytes")

    try:
        with pytest.raises(ValueError, match="cannot sign 3 bytes"):
            await pool.run(broken, b"abc")
        assert await pool.run(lambda d: d[::-1], b"abc") == b"cba"  # still working
    finally:
        pool.close()


async def test_a_cancelled_wait_does_not_break_the_pool() -> None:
    pool = SigningPool(1)
    started, gate = threading.Event(), threading.Event()

    def slow(data: bytes) -> bytes:
        started.set()
        gate.wait(30)
        return data

    try:
        task = asyncio.create_task(pool.run(slow, b"x"))
        # Cancelled while its operation runs on the worker thread.
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.run(lambda d: d, b"next") == b"next"
    finally:
        pool.close()


def test_zero_threads_is_refused() -> None:
    with pytest.raises(ValueError):
        SigningPool(0)


async def test_a_closed_pool_refuses_new_work_instead_of_hanging() -> None:
    pool = SigningPool(1)
    assert await pool.run(lambda d: d, b"before") == b"before"
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(lambda d: d, b"after")
