"""How the dev stack starts and stops its server processes and finds their ports.

One stop routine and one free-port helper for every server here and in the tests.
Each server runs in a session of its own, so a Ctrl-C in the terminal reaches only the
command that started them, which then stops them in order (the export pump
before moto, the sender before the MX). And each is asked to terminate if its
parent dies, so a killed `quiver local` leaves no servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Collection, Sequence
from typing import Any, Literal

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT = 5.0


def _terminate_with_parent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work here.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_process_options() -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen for a local server process."""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _terminate_with_parent
    return options


def stop_process(
    process: subprocess.Popen[Any], *, timeout: float = STOP_TIMEOUT,
    sig: signal.Signals = signal.SIGTERM,
) -> int:
    """Ask a server to stop (`sig`), then SIGKILL its whole process group if it lingers.

    Every server here leads a session of its own (child_process_options), so the
    group kill also takes any worker it forked. Returns the exit status.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout)
    return process.returncode


def free_port(
    host: str = "127.0.0.1", *, avoid: Collection[int] = (),
    protocols: Literal["tcp", "tcp+udp"] = "tcp", tries: int = 50,
) -> int:
    """A port free on `host` right now (the caller binds it soon after); with
    "tcp+udp", free for both (a DNS server listens on both)."""
    return free_port_on([host], avoid=avoid, protocols=protocols, tries=tries)


def free_port_on(
    addresses: Sequence[str], *, avoid: Collection[int] = (),
    protocols: Literal["tcp", "tcp+udp"] = "tcp", tries: int = 50,
) -> int:
    """A port free on every one of `addresses` right now."""
    kinds = [socket.SOCK_STREAM] if protocols == "tcp" else [socket.SOCK_DGRAM, socket.SOCK_STREAM]
    for _ in range(tries):
        with socket.socket(socket.AF_INET, kinds[0]) as first:
            first.bind((addresses[0], 0))
            port: int = first.getsockname()[1]
        if port in avoid:
            continue
        if all(_can_bind(address, port, kind)
               for address in addresses for kind in kinds):
            return port
    raise RuntimeError(f"no port free on all of {', '.join(addresses)} after {tries} tries")


def _can_bind(address: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True
