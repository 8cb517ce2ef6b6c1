"""Real HAProxy egress nodes for the local stack: one haproxy process per policy node.

Each node's haproxy.cfg comes from `python -m proxy_tier render`, the code that
renders production's (run as a command: the runtime package never imports the proxy
tier), so a local run goes through the same PROXY-protocol
frontends, the same destination checks and the same health endpoint; only the
addresses differ (127.0.0.x on loopback instead of a node's secondary private IPs).

    nodes = start_nodes(policy, binary=binary, run_dir=root / "haproxy", log_dir=logs)
    nodes["n2"].stop()    # an "AZ" goes away: its frontends refuse, /health fails
    nodes["n2"].start()   # and comes back on the same addresses
    stop_nodes(nodes)

A node counts as started once its health endpoint answers 200: haproxy binds every
listener before it serves any, so by then every source's frontend listens too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quiver.devstack.processes import child_process_options, stop_process
from quiver.policy import load_policy
from quiver.routing.proxy_probe import HEALTH_URI

# `LocalStack(haproxy=None)` uses HAProxy when it is installed, unless this is 0.
ENV_SWITCH = "QUIVER_LOCAL_HAPROXY"
_OFF = ("0", "false", "no", "off")
# Debian and the upstream build install here; neither is always on a user's PATH.
BINARY_PATHS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
START_TIMEOUT = 10.0
# One policy load and one render: seconds even on a loaded machine.
RENDER_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
# The local stack sends little: a low per-source limit keeps the fd need (2 per
# connection) far under any ulimit, so haproxy never has to raise its own.
LOCAL_MAXCONN_PER_SOURCE = 256
# sun_path holds 108 bytes with its NUL, and HAProxy binds "<path>.<pid>.tmp" first
# and renames it, so it refuses a stats socket path over 97 characters.
_MAX_SOCKET_PATH = 97


class HAProxyUnavailable(RuntimeError):
    """HAProxy mode was asked for explicitly but cannot be used; the text says why."""


def find_haproxy() -> str | None:
    """The haproxy binary: on PATH, else where Debian or a source build installs it."""
    return shutil.which("haproxy") or next(
        (p for p in BINARY_PATHS if os.access(p, os.X_OK)), None
    )


def choose_haproxy(requested: bool | None, environ: Mapping[str, str]) -> str | None:
    """The haproxy binary to run the egress nodes with, or None for direct egress.

    requested True insists (HAProxyUnavailable if it is missing), False declines,
    None uses it when installed unless the environment switch says 0.
    """
    if requested is False:
        return None
    if requested is None and environ.get(ENV_SWITCH, "").strip().lower() in _OFF:
        return None
    binary = find_haproxy()
    if binary is None and requested:
        raise HAProxyUnavailable(
            "HAProxy egress was requested but haproxy is not installed "
            "(apt-get install haproxy), or pass haproxy=False for direct egress"
        )
    return binary


@dataclass
class EgressNode:
    """One haproxy process serving one policy node; stop() and start() may repeat."""

    name: str
    binary: str
    config_path: Path
    log_path: Path
    # The node's health endpoint: (proxy.nodes.<name>.address, proxy.health_port).
    health: tuple[str, int]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start haproxy on the node's config; returns once its health endpoint answers."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            # As every local server: a session of its own (a Ctrl-C meant for `quiver
            # local` does not cut the node down before the stack stops it in order),
            # and it goes when its parent dies.
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                **child_process_options(),
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"haproxy for egress node {self.name} exited with "
                    f"{self.process.returncode}; see {self.log_path} (or set "
                    f"{ENV_SWITCH}=0 to send without HAProxy)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"haproxy for egress node {self.name} did not answer on "
                    f"{self.health[0]}:{self.health[1]}{HEALTH_URI} within {timeout:.0f} s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.05)

    def healthy(self) -> bool:
        """GET /health answers 200 now (what the sender's probe asks too)."""
        conn = http.client.HTTPConnection(*self.health, timeout=1.0)
        try:
            conn.request("GET", HEALTH_URI)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (haproxy's hard stop: open connections are cut), SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return
        stop_process(process, timeout=timeout)
        self.process = None


def render_config(policy_path: Path, node: str, *, stats_socket: str | None) -> str:
    """Node `node`'s haproxy.cfg, as `python -m proxy_tier render` prints it."""
    command = [sys.executable, "-m", "proxy_tier", "render", "--config", str(policy_path),
               "--node", node, "--maxconn-per-source", str(LOCAL_MAXCONN_PER_SOURCE)]
    command += ["--stats-socket", stats_socket] if stats_socket else ["--no-stats-socket"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=RENDER_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"rendering egress node {node} from {policy_path} failed "
                           f"(exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def write_configs(
    policy_path: Path, *, binary: str, run_dir: Path, log_dir: Path
) -> dict[str, EgressNode]:
    """Render every node's haproxy.cfg into run_dir; nothing is started."""
    policy = load_policy(policy_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    nodes: dict[str, EgressNode] = {}
    for name, spec in policy.proxy.nodes.items():
        socket_path = run_dir.resolve() / f"{name}.sock"
        # The admin socket lets an operator drain a node locally (`disable server
        # drain/in_service`); a root directory too deep for a unix socket goes without.
        stats = str(socket_path) if len(str(socket_path)) <= _MAX_SOCKET_PATH else None
        config_path = run_dir / f"{name}.cfg"
        config_path.write_text(render_config(policy_path, name, stats_socket=stats))
        nodes[name] = EgressNode(
            name=name, binary=binary, config_path=config_path,
            log_path=log_dir / f"haproxy-{name}.log",
            health=(spec.address, policy.proxy.health_port),
        )
    return nodes


def start_nodes(
    policy_path: Path, *, binary: str, run_dir: Path, log_dir: Path
) -> dict[str, EgressNode]:
    """Render and start one haproxy per policy node; all are up (or none) on return."""
    nodes = write_configs(policy_path, binary=binary, run_dir=run_dir, log_dir=log_dir)
    try:
        for node in nodes.values():
            node.start()
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: Mapping[str, EgressNode]) -> None:
    """Stop every node; one that fails to stop does not keep the others up."""
    for node in nodes.values():
        with contextlib.suppress(Exception):
            node.stop()
