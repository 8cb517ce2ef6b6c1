"""A private Postfix instance relaying to the benchmark's smtp-sink: the peer to beat.

smtp-source → Postfix smtpd (its own high port) → queue on tmpfs → smtp client
→ smtp-sink. The instance has its own config directory, queue and pid files, so
it never touches a system Postfix; `stop()` shuts it down and removes its files.
Its queue lives on tmpfs, Postfix's fastest setting, which is the figure Quiver
is compared against. Postfix needs root to start (it drops privileges itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rig import SmtpSink, binary, tree_cpu_seconds

LOG_FILE = Path("/var/log/quiver-bench-postfix.log")
# smtp-source's message length: the size of Quiver's benchmark messages.
MESSAGE_BYTES = 5000
_QUEUE_DIRS = ("incoming", "active", "deferred", "hold", "maildrop")

MAIN_CF = """\
# Written by bench/postfix_peer.py for one benchmark run; removed afterwards.
compatibility_level = 3.6
config_directory = {config_dir}
queue_directory = {queue_dir}
data_directory = {data_dir}
command_directory = {command_dir}
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.quiver.test
mydomain = bench.quiver.test
myorigin = $myhostname
# Relay everything to the sink: no local delivery, no DNS.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink_port}
smtp_host_lookup = native
disable_dns_lookups = yes
smtpd_peername_lookup = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# smtp-sink speaks no TLS, and Quiver's benchmark policy does not verify it either.
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {log_file}
biff = no
# Accept as fast as the clients send (no flow-control pause on the way in), and
# enough processes for every injecting session and outgoing connection.
in_flow_delay = 0
default_process_limit = 200
default_destination_concurrency_limit = {concurrency}
"""

# chroot off: the queue is a fresh tmpfs directory without the files a chroot needs.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixUnavailable(RuntimeError):
    """Why the peer cannot run here (not installed, not root); the benchmark says so."""


@dataclass(frozen=True, slots=True)
class RelayRun:
    messages: int
    seconds: float  # first byte injected → the sink counted every message
    complete: bool  # False: the sink did not count them all within the time limit
    postfix_cpu_s: float  # every process of the instance, over injection and delivery
    source_cpu_s: float  # smtp-source, the injector
    sink_cpu_s: float

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def unavailable_reason() -> str | None:
    for tool in ("postfix", "smtp-source", "smtp-sink"):
        if binary(tool) is None:
            return f"{tool} is not installed (Debian package: postfix)"
    if os.geteuid() != 0:
        return "starting a private Postfix instance needs root"
    if not Path("/usr/lib/postfix/sbin/master").exists():
        return "Postfix's daemons are not in /usr/lib/postfix/sbin"
    return None


def _tmpfs_base() -> Path | None:
    """/dev/shm when it is a tmpfs mount (it is on Debian), else None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "/dev/shm" and parts[2] == "tmpfs":
            return Path("/dev/shm")
    return None


class PostfixPeer:
    def __init__(self, *, work_dir: Path, port: int, sink_port: int, concurrency: int = 20,
                 accept_only: bool = False) -> None:
        self.port = port
        # Without the queue manager nothing leaves incoming/: Postfix's cost of accepting
        # a message into its queue alone (smtpd, cleanup, trivial-rewrite), the figure an
        # ingress that only enqueues is compared against (bench/ingress.py).
        self.accept_only = accept_only
        self.sink_port = sink_port
        self.concurrency = concurrency
        self.config_dir = work_dir / "postfix-etc"
        base = _tmpfs_base()
        self.queue_on = "tmpfs" if base is not None else "disk"
        self._state_dir = Path(tempfile.mkdtemp(prefix="quiver-bench-postfix-",
                                                dir=base or work_dir))
        self.queue_dir = self._state_dir / "queue"
        self.data_dir = self._state_dir / "data"
        self._postfix = binary("postfix") or "postfix"
        self._master_pid: int | None = None
        self._started = False

    def start(self) -> PostfixPeer:
        reason = unavailable_reason()
        if reason is not None:
            raise PostfixUnavailable(reason)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # mkdtemp makes it private to root; Postfix's unprivileged daemons must traverse it.
        self._state_dir.chmod(0o755)
        self.queue_dir.mkdir(parents=True)
        self.data_dir.mkdir(parents=True)
        shutil.chown(self.data_dir, user="postfix")
        (self.config_dir / "main.cf").write_text(MAIN_CF.format(
            config_dir=self.config_dir, queue_dir=self.queue_dir, data_dir=self.data_dir,
            command_dir=Path(self._postfix).parent, sink_port=self.sink_port,
            log_file=LOG_FILE, concurrency=self.concurrency,
        ))
        master = MASTER_CF.format(port=self.port)
        if self.accept_only:
            master = "".join(line for line in master.splitlines(keepends=True)
                             if not line.startswith(("qmgr ", "pickup ")))
        (self.config_dir / "master.cf").write_text(master)
        # The log only matters for the current run; start it empty.
        LOG_FILE.write_bytes(b"")
        self._started = True
        out = self._run("start")
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if pid_file.exists() and (text := pid_file.read_text().strip()):
                self._master_pid = int(text)
                break
            time.sleep(0.1)
        if self._master_pid is None:
            raise RuntimeError(f"postfix did not start: {out}\nsee {LOG_FILE}")
        self._wait_listening()
        return self

    def _run(self, action: str) -> str:
        done = subprocess.run(
            [self._postfix, "-c", str(self.config_dir), action],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {action} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}\nsee {LOG_FILE}")
        return done.stdout + done.stderr

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)  # the banner
                    s.sendall(b"QUIT\r\n")
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix's smtpd did not answer on 127.0.0.1:{self.port}")

    def cpu_seconds(self) -> float:
        """CPU of the master and every Postfix process it started, live or exited."""
        assert self._master_pid is not None
        return tree_cpu_seconds(self._master_pid)

    def queued(self) -> int:
        return sum(
            len(files) for d in _QUEUE_DIRS for _, _, files in os.walk(self.queue_dir / d)
        )

    def relay(self, *, messages: int, sessions: int, sink: SmtpSink, timeout: float,
              tick: Callable[[int], None] | None = None) -> RelayRun:
        """Inject `messages` with smtp-source and wait until the sink counted them all."""
        source = binary("smtp-source") or "smtp-source"
        base = sink.count()
        cpu0, sink0 = self.cpu_seconds(), sink.cpu_seconds()
        children0 = os.times()
        started = time.monotonic()
        # -d keeps each injecting session open for many messages, as Quiver's
        # connections are.
        injector = subprocess.Popen(
            [source, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(MESSAGE_BYTES),
             "-f", "bench@source.bench.quiver.test", "-t", "user@sink.bench.quiver.test",
             f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            complete = sink.wait_for(
                base + messages, timeout=timeout,
                # An injector that failed (refused, cut off) will not send the rest.
                alive=lambda: injector.poll() in (None, 0),
                tick=None if tick is None else (lambda n: tick(n - base)),
            )
            seconds = time.monotonic() - started
            injector.wait(timeout=max(1.0, timeout - seconds))
        finally:
            if injector.poll() is None:
                injector.kill()
                injector.wait(timeout=5)
        # Postfix removes a message from its queue just after the sink's reply; let the
        # last few finish so their CPU is in this run's figure.
        deadline = time.monotonic() + 30
        while self.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        children1 = os.times()
        return RelayRun(
            messages=messages, seconds=seconds, complete=complete,
            postfix_cpu_s=self.cpu_seconds() - cpu0,
            source_cpu_s=(children1.children_user + children1.children_system)
            - (children0.children_user + children0.children_system),
            sink_cpu_s=sink.cpu_seconds() - sink0,
        )

    def stop(self) -> None:
        """Stop the instance (cleanly, then by the master's pid) and remove its files."""
        if self._started:
            self._started = False
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
                self._run("stop")
            if self._master_pid is not None:
                self._wait_gone(self._master_pid)
        shutil.rmtree(self._state_dir, ignore_errors=True)
        shutil.rmtree(self.config_dir, ignore_errors=True)

    @staticmethod
    def _wait_gone(pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.1)
        # The master did not stop in time; its workers exit when they lose it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
