"""A DKIM signing worker process: private-key operations for the sender, over pipes.

The sender (quiver.dkim.processes) starts it (Python with `-P`, calling `main`) and
talks to it in frames on its stdin and stdout. A worker process instead of a
thread because a thread costs the sender more than its signatures: each signature
releases the GIL and takes it back from the busy event loop, and on the
development machine (`bench/rsa_beside.py`) an RSA-2048 signature beside a busy
Python thread cost 1.31 times its CPU alone, beside another process 0.95 times.

Frames are a header `>BII` (kind, number, length) and `length` bytes:

    to the worker    KEY     number = key id, payload = algorithm, LF, PKCS#8 PEM
                     SIGN    number = job id, payload = key id (>I), the data to sign
                     FORGET  every key (the sender's cache of keys was emptied)
    from the worker  SIGNED  number = job id, payload = the signature
                     FAILED  number = job id, payload = why, UTF-8

A key that does not load fails the jobs that name it, not the worker. The worker
runs in a session of its own and ignores SIGINT and SIGTERM besides (the sender
drains after either, still signing): it ends when its stdin closes, which is also
what happens when the sender dies.
"""

from __future__ import annotations

import os
import signal
import struct
import sys

from quiver.dkim.errors import DkimError
from quiver.dkim.keys import PrivateKey, load_private_key
from quiver.dkim.signer import private_key_sign

HEADER = struct.Struct(">BII")
KEY_ID = struct.Struct(">I")
KEY, SIGN, FORGET = 1, 2, 3
SIGNED, FAILED = 10, 11
# The most a frame may carry: a key's PEM, or the data a signature covers (the
# signed header fields; the pool signs anything larger on the event loop).
MAX_FRAME = 4 << 20
# Read at most this much at a time, at either end of the pipes.
READ_SIZE = 1 << 16


class FrameError(Exception):
    """The other side sent something that is not a frame of this protocol."""


def frame(kind: int, number: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, number, len(payload)) + payload


def frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """The whole frames at the start of `buffer`, taken out of it."""
    out: list[tuple[int, int, bytes]] = []
    start = 0
    while len(buffer) - start >= HEADER.size:
        kind, number, length = HEADER.unpack_from(buffer, start)
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes (at most {MAX_FRAME})")
        end = start + HEADER.size + length
        if end > len(buffer):
            break
        out.append((kind, number, bytes(buffer[start + HEADER.size:end])))
        start = end
    del buffer[:start]
    return out


class Worker:
    """The worker's state: the keys it was sent, by id."""

    def __init__(self) -> None:
        self.keys: dict[int, PrivateKey | DkimError] = {}

    def answer(self, kind: int, number: int, payload: bytes) -> bytes:
        """The reply frame for one frame from the sender (b"" when none is due)."""
        if kind == KEY:
            algorithm, _, pem = payload.partition(b"\n")
            try:
                self.keys[number] = load_private_key(pem, algorithm.decode("ascii", "replace"))
            except DkimError as exc:
                self.keys[number] = exc  # the jobs that use it say why
            return b""
        if kind == FORGET:
            self.keys.clear()
            return b""
        if kind != SIGN or len(payload) < KEY_ID.size:
            raise FrameError(f"unexpected frame kind {kind} ({len(payload)} bytes)")
        (key_id,) = KEY_ID.unpack_from(payload)
        key = self.keys.get(key_id)
        if key is None:
            return frame(FAILED, number, f"no key {key_id} was sent".encode())
        if isinstance(key, DkimError):
            return frame(FAILED, number, f"the key did not load: {key}".encode())
        try:
            return frame(SIGNED, number, private_key_sign(key, payload[KEY_ID.size:]))
        except Exception as exc:  # reported to the job; the worker goes on
            return frame(FAILED, number, f"{type(exc).__name__}: {exc}".encode())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(read_fd: int, write_fd: int) -> int:
    """Answer frames until the input ends; 0 then, 2 on a protocol error."""
    worker = Worker()
    buffer = bytearray()
    while chunk := os.read(read_fd, READ_SIZE):
        buffer += chunk
        try:
            for f in frames(buffer):
                # Each answer goes back as soon as it is made: a busy event loop
                # reads what piled up in one read, an idle one gets it at once.
                if reply := worker.answer(*f):
                    _write_all(write_fd, reply)
        except FrameError as exc:
            print(f"quiver.dkim.worker: {exc}", file=sys.stderr)
            return 2
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return serve(sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 0  # the sender is gone: nobody is waiting for the answers


if __name__ == "__main__":
    sys.exit(main())
