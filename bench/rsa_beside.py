"""What one RSA-2048 signature costs the thread that makes it, alone and beside busy Python.

The sender's event loop is a thread that holds the GIL most of the time. A signing
thread beside it releases the GIL for each signature and must take it back after,
from that busy thread. This measures the signing thread's own CPU per signature
(`time.thread_time`) in four settings, alternating, and prints medians and each
against "alone" measured in the same round:

- alone: nothing else runs in the process;
- beside a Python thread: a thread of this process runs a pure-Python loop (holds
  the GIL but for the interpreter's switches);
- beside a thread in C without the GIL: hashlib over a large buffer;
- beside a Python process: the same loop in another process (no GIL shared).

Its figures are why the sender signs in worker processes (quiver.dkim.processes).
Prints figures, never fails on time.

    .venv/bin/python bench/rsa_beside.py                        # 300 signatures, 5 rounds
    .venv/bin/python bench/rsa_beside.py --signatures 100 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from quiver.dkim import DkimSigner, generate_private_key

DATA = b"x" * 400  # about what a relaxed header block hashes


def python_loop(stop: Callable[[], bool]) -> None:
    total = 0
    while not stop():
        for i in range(1000):
            total += i


def hashing(stop: Callable[[], bool]) -> None:
    block = b"y" * (8 << 20)
    while not stop():
        hashlib.sha256(block).digest()  # releases the GIL for buffers over 2 KiB


def _process_loop(done: Any) -> None:  # a multiprocessing Event
    python_loop(done.is_set)


@contextmanager
def beside(kind: str) -> Iterator[None]:
    """Run the named load for the duration of the block."""
    if kind == "alone":
        yield
        return
    if kind == "python process":
        done = multiprocessing.get_context("spawn").Event()
        process = multiprocessing.get_context("spawn").Process(
            target=_process_loop, args=(done,))
        process.start()
        try:
            yield
        finally:
            done.set()
            process.join(timeout=30)
        return
    stopped = threading.Event()
    body = python_loop if kind == "python thread" else hashing
    thread = threading.Thread(target=body, args=(stopped.is_set,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join(timeout=30)


def signature_cpu_us(signer: DkimSigner, count: int) -> float:
    start = time.thread_time()
    for _ in range(count):
        signer.key_sign(DATA)
    return (time.thread_time() - start) / count * 1e6


KINDS = ("alone", "python thread", "C thread without the GIL", "python process")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--signatures", type=int, default=300, help="per setting and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians (default 5)")
    p.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    args = p.parse_args(argv)
    if args.signatures < 10 or args.rounds < 1:
        p.error("--signatures >= 10, --rounds >= 1")
    signer = DkimSigner.from_pem(domain="bench.quiver.test", selector="s1",
                                 algorithm="rsa-sha256", pem=generate_private_key("rsa-sha256"))
    signer.key_sign(DATA)  # warm
    rows: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        row: dict[str, float] = {}
        for kind in KINDS:
            with beside(kind):
                row[kind] = signature_cpu_us(signer, args.signatures)
        rows.append(row)
        print(f"round {number}/{args.rounds}: " + ", ".join(
            f"{k} {v:,.0f} µs" for k, v in row.items()), file=sys.stderr)
    out: dict[str, object] = {"signatures": args.signatures, "rounds": args.rounds}
    for kind in KINDS:
        key = kind.replace(" ", "_")
        out[f"{key}_us"] = round(statistics.median(r[kind] for r in rows), 1)
        # Each round's figure against that round's "alone": the machine's speed cancels.
        out[f"{key}_vs_alone"] = round(statistics.median(r[kind] / r["alone"] for r in rows), 3)
    print("RSA-2048 signature, CPU of the signing thread (medians of "
          f"{args.rounds} rounds of {args.signatures}):", file=sys.stderr if args.json else None)
    for kind in KINDS:
        key = kind.replace(" ", "_")
        print(f"  {kind:28} {out[f'{key}_us']:>9,.0f} µs   x{out[f'{key}_vs_alone']:.2f}",
              file=sys.stderr if args.json else None)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
