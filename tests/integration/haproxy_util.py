"""Run real HAProxy processes in tests: validate configs, start, query, reload, stop.

    with short_tempdir() as run_dir:
        config = render_haproxy_config(policy, "n1", stats_socket=f"{run_dir}/n1.sock")
        with running_haproxy(config, run_dir, name="n1") as proxy:
            ...                      # every bind line is listening here
            proxy.stat("egress_s1", "FRONTEND")["dses"]

The process always stops when the block ends (SIGTERM, then SIGKILL of its
process group). `require_haproxy()` skips the calling test when the binary is
missing. Readiness is read from /proc/net/tcp*, not by connecting, so waiting
never adds a connection to the counters a test asserts on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quiver.devstack.haproxy import find_haproxy
from quiver.devstack.processes import stop_process

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_BIND = re.compile(r"^\s*bind\s+(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d+)\b", re.M)
_STATS_SOCKET = re.compile(r"^\s*stats socket\s+(\S+)", re.M)
_TCP_LISTEN = "0A"
# What the master logs each time a worker has loaded its config.
_LOADED = "Loading success."


def require_haproxy() -> str:
    """The haproxy binary, or skip the test with the reason."""
    binary = find_haproxy()
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return binary


@contextlib.contextmanager
def short_tempdir(prefix: str = "hap") -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_config(
    config: str, workdir: Path, *, name: str = "check"
) -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f` on the config text (it parses and resolves, it does not bind)."""
    path = workdir / f"{name}.cfg"
    path.write_text(config)
    return subprocess.run(
        [require_haproxy(), "-c", "-f", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )


def bind_addresses(config: str) -> list[tuple[str, int]]:
    """(address, port) of every bind line in the config."""
    return [(host.strip("[]"), int(port)) for host, port in _BIND.findall(config)]


def listening() -> set[tuple[str, int]]:
    """TCP sockets in LISTEN state on this host, from /proc/net/tcp and tcp6."""
    found: set[tuple[str, int]] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != _TCP_LISTEN:
                    continue
                host_hex, port_hex = fields[1].split(":")
                raw = bytes.fromhex(host_hex)
                # The kernel prints each 32-bit word in host (little-endian) order.
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
                family = socket.AF_INET if width == 4 else socket.AF_INET6
                found.add((socket.inet_ntop(family, packed), int(port_hex, 16)))
    return found


@dataclass
class HAProxyProcess:
    """A running haproxy; `log()` holds what it wrote to stdout/stderr."""

    name: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    stats_socket: Path | None
    binds: list[tuple[str, int]] = field(default_factory=list)
    master_worker: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, command: str, *, timeout: float = 5.0) -> str:
        """Send one command on the stats socket and return the answer."""
        if self.stats_socket is None:
            raise RuntimeError(f"{self.name}: the config has no stats socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """`show stat` as one dict per row, keyed by the CSV header (pxname, svname, ...)."""
        lines = [line for line in self.command("show stat").splitlines() if line]
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def stat(self, proxy: str, service: str) -> dict[str, str]:
        """One row: service is FRONTEND, BACKEND or a server name."""
        for row in self.stats():
            if row["pxname"] == proxy and row["svname"] == service:
                return row
        raise KeyError(f"{self.name}: no stats row {proxy}/{service}")

    def counter(self, proxy: str, service: str, name: str) -> int:
        return int(self.stat(proxy, service)[name] or 0)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise RuntimeError(f"{self.name}: haproxy exited at start:\n{self.log()}")
            missing = [b for b in self.binds if b not in listening()]
            if not missing and (self.stats_socket is None or self.stats_socket.exists()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not listening on {missing}:\n{self.log()}")
            time.sleep(0.02)

    def reload(self, timeout: float = START_TIMEOUT) -> None:
        """Seamless reload (master-worker only): a new worker takes over the listeners.

        Returns once the master reports the new worker loaded.
        """
        if not self.master_worker:
            raise RuntimeError(f"{self.name}: reload needs master_worker=True")
        loaded = self.log().count(_LOADED)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while self.log().count(_LOADED) <= loaded:
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: reload did not complete:\n{self.log()}")
            time.sleep(0.02)
        self.wait_listening(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL to its process group (workers included) if it lingers."""
        stop_process(self.process, timeout=timeout)
        if self.master_worker:
            # Its workers share its process group; none may outlive the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


def start_haproxy(
    config: str,
    workdir: Path,
    *,
    name: str = "haproxy",
    master_worker: bool = False,
    timeout: float = START_TIMEOUT,
) -> HAProxyProcess:
    """Write the config, start haproxy in the foreground, wait until every bind listens.

    Prefer `running_haproxy`, which always stops it; a caller of this stops it.
    """
    binary = require_haproxy()
    config_path = workdir / f"{name}.cfg"
    config_path.write_text(config)
    log_path = workdir / f"{name}.log"
    socket_match = _STATS_SOCKET.search(config)
    args = [binary, "-W" if master_worker else "-db", "-f", str(config_path)]
    if master_worker:
        args.append("-db")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proxy = HAProxyProcess(
        name=name, config_path=config_path, log_path=log_path, process=process,
        stats_socket=Path(socket_match.group(1)) if socket_match else None,
        binds=bind_addresses(config), master_worker=master_worker,
    )
    try:
        proxy.wait_listening(timeout)
    except BaseException:
        proxy.stop()
        raise
    return proxy


@contextlib.contextmanager
def running_haproxy(
    config: str, workdir: Path, *, name: str = "haproxy", master_worker: bool = False
) -> Iterator[HAProxyProcess]:
    proxy = start_haproxy(config, workdir, name=name, master_worker=master_worker)
    try:
        yield proxy
    finally:
        proxy.stop()


