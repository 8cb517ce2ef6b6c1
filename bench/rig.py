"""Measuring helpers the end-to-end benchmark shares: /proc CPU and memory readings,
and Postfix's `smtp-sink` as the counting receiver both contenders deliver to.

Everything here reads /proc directly (no psutil) and talks only to loopback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# smtp-sink -c rewrites one status line per event ("sess=N quit=N mesg=N\r"); the
# newest one is within this many bytes of the end of its output.
_TAIL_BYTES = 256
_MESG = re.compile(rb"mesg=(\d+)")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat fields after the command name (which may contain spaces)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].decode().split()


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU of a process (all its threads); with `reaped_children`, plus the
    CPU of children it has already waited for (how a daemon's exited workers are counted).
    """
    fields = _stat_fields(pid)
    # After the name: state=0, ppid=1, ..., utime=11, stime=12, cutime=13, cstime=14.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU of a daemon and its workers: the root, its reaped children, its live children.

    A worker that exits between two readings moves from "live" to the root's reaped
    total, so differences of this figure stay exact.
    """
    total = cpu_seconds(root, reaped_children=True)
    for child in children_of(root):
        try:
            total += cpu_seconds(child, reaped_children=True)
        except OSError:
            # Exited and reaped between listing and reading: now in the root's total,
            # which was read before, so this reading undercounts by that worker at most.
            continue
    return total


def cpu_us_per_call(fn: Callable[[], object], count: int) -> float:
    """CPU µs of one call of `fn` in this process (every thread), over `count` calls."""
    start = time.process_time()
    for _ in range(count):
        fn()
    return (time.process_time() - start) / count * 1e6


def rsa_sign_us(key_sign: Callable[[bytes], bytes], count: int = 200) -> float:
    """CPU µs of one private-key operation (a DkimSigner's `key_sign`) on this machine
    now: the floor under the sender's CPU per message, which signs each message once."""
    data = b"x" * 400  # about what a relaxed header block hashes
    return cpu_us_per_call(lambda: key_sign(data), count)


# OpenSSL's RSA takes an AVX-512 IFMA path where the CPU has it (CPUID leaf 7, EBX bit
# 21), 1.7-1.8x faster than its generic one on the development machine; Python gains
# nothing from it. OPENSSL_ia32cap's second word masks leaf 7 ("~" clears bits), so
# OPENSSL_ia32cap=":~0x200000" makes such a host sign as one without it.
_IFMA_BIT = 1 << 21
NO_IFMA = f":~{_IFMA_BIT:#x}"


def rsa_path(cpuinfo: str | None = None, ia32cap: str | None = None) -> str:
    """Which RSA code OpenSSL runs here: "avx512ifma" or "generic". A signature's cost,
    the denominator of `overhead_per_rsa_sign`, depends on it: print it beside."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if ia32cap is None:
        ia32cap = os.environ.get("OPENSSL_ia32cap", "")  # noqa: SIM112 (OpenSSL's spelling)
    if "avx512ifma" not in cpuinfo.split():
        return "generic"
    _, _, leaf7 = ia32cap.partition(":")
    if leaf7:
        inverted = leaf7.startswith("~")
        try:
            bits = int(leaf7.lstrip("~"), 0)
        except ValueError:
            return "avx512ifma"  # unreadable here: the CPU's flag decides
        has_bit = bool(bits & _IFMA_BIT)
        # "~" clears the bits it names; a plain word is the capabilities themselves.
        if has_bit == inverted:
            return "generic"
    return "avx512ifma"


def add_signing_options(p: argparse.ArgumentParser) -> None:
    """--signing-processes and --signing-threads: where the sender under test signs
    (neither given: where its policy says, one worker process)."""
    p.add_argument("--signing-processes", type=int, default=None,
                   help="the sender's DKIM signing worker processes (default: the policy's, 1)")
    p.add_argument("--signing-threads", type=int, default=None,
                   help="signing threads instead; 0 (and no --signing-processes): the sender "
                        "signs on its event loop")


def check_signing_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The policy's bounds for the two options, and not both at once."""
    for count in (args.signing_processes, args.signing_threads):
        if count is not None and not 0 <= count <= 16:
            p.error("--signing-processes and --signing-threads must be 0-16")
    if args.signing_processes and args.signing_threads:
        p.error("--signing-processes or --signing-threads, not both")


def children_peak_rss_mb(pid: int) -> float:
    """The peak resident sets of a process's running children, added up."""
    total = 0.0
    for child in children_of(pid):
        try:
            total += peak_rss_mb(child)
        except OSError:
            continue
    return total


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def self_cpu_seconds() -> float:
    """CPU of this process, every thread (the feeder and pollers included)."""
    t = os.times()
    return t.user + t.system


def binary(name: str) -> str | None:
    """Postfix's tools live in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


@dataclass
class SmtpSink:
    """Postfix's smtp-sink on loopback, counting every completed DATA (`-c`)."""

    process: subprocess.Popen[bytes]
    port: int
    out_path: Path

    def count(self) -> int:
        with self.out_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            found = _MESG.findall(f.read())
        return int(found[-1]) if found else 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def wait_for(self, target: int, *, timeout: float, alive: Callable[[], bool] = lambda: True,
                 tick: Callable[[int], None] | None = None, interval: float = 0.02) -> bool:
        """Poll until the counter reaches `target`; False on timeout or when `alive` fails."""
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while True:
            n = self.count()
            if n >= target:
                return True
            now = time.monotonic()
            if now >= deadline or not alive():
                return False
            if tick is not None and now >= next_tick:
                tick(n)
                next_tick = now + 1.0
            time.sleep(interval)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_sink(*, work_dir: Path, port: int, backlog: int = 256) -> SmtpSink:
    """Start smtp-sink on 127.0.0.1:port; returns once it accepts connections."""
    exe = binary("smtp-sink")
    if exe is None:
        raise FileNotFoundError("smtp-sink is not installed (Debian package: postfix)")
    out_path = work_dir / "smtp-sink.out"
    out = out_path.open("wb")
    # As root smtp-sink insists on dropping privileges to a named user (-u).
    user = ["-u", "root"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [exe, *user, "-c", f"127.0.0.1:{port}", str(backlog)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    out.close()
    sink = SmtpSink(process=process, port=port, out_path=out_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited with {process.returncode}: "
                               f"{out_path.read_text(errors='replace')[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                # The probe is a session that quits without mail: mesg stays unchanged.
                return sink
        except OSError:
            time.sleep(0.05)
    sink.stop()
    raise RuntimeError(f"smtp-sink did not listen on 127.0.0.1:{port} within 10 s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
