"""The egress tier with real HAProxy on loopback: two nodes ("two AZs"), four sources.

Sources leave from 127.0.0.2-127.0.0.5; a counting TCP sink on 127.0.0.1 plays
the receiving MX. Node n1 renders the policy as is (allow 127.0.0.0/8); node n2
is rendered with allow_networks narrowed to 127.0.0.0/30, so a destination like
127.0.0.9 must be refused there while n1 reaches it: the pair shows the refusal
comes from the network rule. No test ever sends traffic outside 127.0.0.0/8:
10.0.0.1 is only ever *named* in a header, and the proof that nothing was
attempted comes from HAProxy's own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from haproxy_util import (
    HAProxyProcess,
    check_config,
    require_haproxy,
    running_haproxy,
    short_tempdir,
)

from proxy_tier.bootstrap import render_user_data
from proxy_tier.render import render_all, render_haproxy_config
from quiver.devstack.processes import free_port
from quiver.policy import Policy, load_policy, parse_policy
from quiver.routing.proxy_probe import probe
from quiver.smtp.proxy_decode import decode
from quiver.smtp.proxy_header import V2_SIGNATURE, encode

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCES = {"s1": ("127.0.0.2", "n1"), "s2": ("127.0.0.3", "n1"),
           "s3": ("127.0.0.4", "n2"), "s4": ("127.0.0.5", "n2")}
NODE_ADDRESS = {"n1": "127.0.0.20", "n2": "127.0.0.21"}
IO_TIMEOUT = 5.0


def policy_text(*, frontend_port: int, health_port: int, sink_port: int) -> str:
    lines = [
        "local_only = true",
        'default_pool = "all"',
        "[proxy]",
        "protocol = 2",
        f"frontend_port = {frontend_port}",
        f"health_port = {health_port}",
        f"allowed_ports = [{sink_port}]",
        'allow_networks = ["127.0.0.0/8"]',
    ]
    for node, address in NODE_ADDRESS.items():
        lines += [f"[proxy.nodes.{node}]", f'az = "az-{node}"', f'address = "{address}"']
    for name, (local_ip, node) in SOURCES.items():
        lines += [f"[sources.{name}]", f'ip = "192.0.2.{local_ip.rsplit(".", 1)[1]}"',
                  f'local_ip = "{local_ip}"', f'node = "{node}"', f'ehlo = "{name}.example.com"']
    lines += ["[pools.all]", f"sources = {list(SOURCES)}".replace("'", '"')]
    return "\n".join(lines) + "\n"


class Listener:
    """A TCP server that counts accepts, records peers, greets and echoes one line."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.peers: list[tuple[str, int]] = []
        self._markers: set[tuple[str, int]] = set()  # the barrier's own connections
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def accepts(self) -> int:
        return len([peer for peer in self.peers if peer not in self._markers])

    def barrier(self) -> None:
        """Return once every connection that reached this listener before now is counted.

        The kernel hands connections to accept() in arrival order (on loopback the
        handshake completes inside connect()), so once a connection of our own has been
        accepted and served, every earlier one has been accepted too. It is not counted.
        """
        host, port = self.sock.getsockname()[:2]
        with socket.socket(self.sock.family) as conn:
            conn.settimeout(IO_TIMEOUT)
            conn.bind((host, 0))
            self._markers.add(conn.getsockname()[:2])
            conn.connect((host, port))
            assert conn.recv(100).startswith(b"220 sink ready"), "the listener never served"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[:2])
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            with contextlib.suppress(OSError):
                conn.sendall(b"220 sink ready\r\n")
                line = conn.makefile("rb").readline(1000)
                if line:
                    conn.sendall(b"250 " + line)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


@dataclass
class Rig:
    policy: Policy
    sink: Listener
    other_port: Listener  # 127.0.0.1 on a port that is not allowed
    outside_30: Listener  # 127.0.0.9 on the allowed port: outside n2's 127.0.0.0/30
    nodes: dict[str, HAProxyProcess] = field(default_factory=dict)
    run_dir: Path = Path()

    def frontend(self, source: str) -> tuple[str, int]:
        frontend = self.policy.frontend(self.policy.sources[source])
        assert frontend is not None
        return frontend

    def node_of(self, source: str) -> HAProxyProcess:
        return self.nodes[SOURCES[source][1]]

    def listeners(self) -> list[Listener]:
        return [self.sink, self.other_port, self.outside_30]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_haproxy()
    sink_port = free_port()
    frontend_port = free_port(avoid=[sink_port])
    health_port = free_port(avoid=[sink_port, frontend_port])
    text = policy_text(frontend_port=frontend_port, health_port=health_port, sink_port=sink_port)
    policy = parse_policy(text)
    listeners = [
        Listener("127.0.0.1", sink_port),
        Listener("127.0.0.1", free_port(avoid=[sink_port, frontend_port, health_port])),
        Listener("127.0.0.9", sink_port),
    ]
    try:
        with short_tempdir() as run_dir, contextlib.ExitStack() as stack:
            rig = Rig(policy, *listeners, run_dir=run_dir)
            for node, allow in (("n1", None), ("n2", ["127.0.0.0/30"])):
                config = render_haproxy_config(
                    policy, node, allow_networks=allow, stats_socket=f"{run_dir}/{node}.sock"
                )
                rig.nodes[node] = stack.enter_context(running_haproxy(config, run_dir, name=node))
            yield rig
    finally:
        for listener in listeners:
            listener.close()


def through(rig: Rig, source: str, header: bytes, *, line: bytes = b"EHLO quiver\r\n") -> bytes:
    """Connect to the source's frontend, send header + one line, return all that came back."""
    with socket.create_connection(rig.frontend(source), timeout=IO_TIMEOUT) as conn:
        conn.sendall(header)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            received = conn.recv(1000)
            if received:
                conn.sendall(line)
                while b"250 " not in received and (chunk := conn.recv(1000)):
                    received += chunk
    return received


def header(version: int, dst: tuple[str, int]) -> bytes:
    src = ("127.0.0.1", 40000) if ":" not in dst[0] else ("::1", 40000)
    return encode(version, src=src, dst=dst)


def wait_for(predicate, timeout: float = IO_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- configs ------------------------------------------------------------------------------


def test_haproxy_accepts_every_rendered_config(rig, tmp_path):
    for node, config in render_all(rig.policy, stats_socket=None).items():
        result = check_config(config, tmp_path, name=f"loopback-{node}")
        assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_the_production_configs_without_binding(tmp_path):
    require_haproxy()
    policy = load_policy(REPO / "policy" / "quiver.toml")
    # -c parses and resolves but does not bind: the VPC addresses are not on this host.
    local = {a for a in ("10.60.0.10", "10.60.0.11") if _is_local(a)}
    assert not local
    for node in policy.proxy.nodes:
        for name, config in (
            (f"{node}-plain", render_haproxy_config(policy, node)),
            (f"{node}-user-data", _config_of(render_user_data(policy, node))),
        ):
            result = check_config(config, tmp_path, name=name)
            assert result.returncode == 0, result.stdout + result.stderr


def _is_local(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
        return True


def _config_of(script: str) -> str:
    start = script.index("<<'QUIVER_HAPROXY_CFG'\n") + len("<<'QUIVER_HAPROXY_CFG'\n")
    return script[start : script.index("QUIVER_HAPROXY_CFG\n", start)]


# --- delivery through the proxy -----------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("source", list(SOURCES))
def test_connection_reaches_the_sink_from_the_source_address(rig, source, version):
    before = rig.sink.accepts
    reply = through(rig, source, header(version, ("127.0.0.1", rig.sink.sock.getsockname()[1])))
    assert reply == b"220 sink ready\r\n250 EHLO quiver\r\n"
    assert rig.sink.accepts == before + 1
    assert rig.sink.peers[-1][0] == SOURCES[source][0]


def test_n1_reaches_an_allowed_loopback_address_n2_refuses(rig):
    # Positive control for the refusal tests below: the same header works on n1.
    port = rig.sink.sock.getsockname()[1]
    before = rig.outside_30.accepts
    assert through(rig, "s1", header(2, ("127.0.0.9", port))).startswith(b"220 sink ready")
    assert rig.outside_30.accepts == before + 1
    assert rig.outside_30.peers[-1][0] == "127.0.0.2"


# --- refusals: nothing may reach any listener, nothing may be attempted ------------------


def cannot_leak(source_ip: str, raw: bytes) -> None:
    """Skip unless the kernel itself would stop traffic to the header's destination.

    The refusal tests name destinations outside loopback. Should the config under
    test be wrong, HAProxy would try to connect to them from the source's loopback
    address: Linux refuses to route from 127.0.0.0/8 to anywhere else (unless
    route_localnet is set), and an IPv4 source cannot reach an IPv6 destination.
    `ip route get` asks the routing table without sending anything.
    """
    header, _ = decode(raw)
    if header is None or header.dst is None:
        return
    src = ipaddress.ip_address(source_ip)
    dst = ipaddress.ip_address(header.dst[0])
    if isinstance(dst, ipaddress.IPv6Address) and src.version == 4:
        if dst.ipv4_mapped is None and dst.sixtofour is None:
            return  # an IPv4 socket cannot reach it
        dst = dst.ipv4_mapped or dst.sixtofour
    if dst.version != src.version or dst.is_loopback:
        return
    if shutil.which("ip") is None:
        pytest.skip("cannot prove that a wrong config would not leak traffic: no `ip` tool")
    lookup = subprocess.run(
        ["ip", f"-{dst.version}", "route", "get", str(dst), "from", source_ip],
        capture_output=True, timeout=10, check=False,
    )
    if lookup.returncode == 0:
        pytest.skip(f"the kernel would route {source_ip} -> {dst}: not naming it in a test")


def refused(rig: Rig, source: str, raw: bytes, *, by_rule: bool = True) -> None:
    """The header is refused: by our session rules (by_rule) or by HAProxy's own parser."""
    cannot_leak(SOURCES[source][0], raw)
    node = rig.node_of(source)
    proxy = f"egress_{source}"
    accepts = [listener.accepts for listener in rig.listeners()]
    denied = node.counter(proxy, "FRONTEND", "dses")
    attempts = node.counter(proxy, "dst", "connect")
    backend_sessions = node.counter(proxy, "BACKEND", "stot")
    assert through(rig, source, raw) == b""
    # Refused by the session rules: counted there, never handed to the backend,
    # never a connection attempt.
    if by_rule:
        assert wait_for(lambda: node.counter(proxy, "FRONTEND", "dses") == denied + 1)
    assert node.counter(proxy, "BACKEND", "stot") == backend_sessions
    assert node.counter(proxy, "dst", "connect") == attempts
    # Nor did anything reach a listener (should the counters ever miss a connection).
    for listener in rig.listeners():
        listener.barrier()
    assert [listener.accepts for listener in rig.listeners()] == accepts


@pytest.mark.parametrize("version", [1, 2])
def test_port_not_allowed_is_refused(rig, version):
    port = rig.other_port.sock.getsockname()[1]
    refused(rig, "s1", header(version, ("127.0.0.1", port)))
    refused(rig, "s3", header(version, ("127.0.0.1", port)))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("port", [25, 587])
def test_smtp_ports_other_than_the_allowed_one_are_refused(rig, version, port):
    refused(rig, "s2", header(version, ("127.0.0.1", port)))


@pytest.mark.parametrize("version", [1, 2])
def test_private_destination_is_refused_without_an_attempt(rig, version):
    port = rig.sink.sock.getsockname()[1]
    for source in ("s1", "s4"):
        refused(rig, source, header(version, ("10.0.0.1", port)))
        refused(rig, source, header(version, ("169.254.169.254", port)))
        refused(rig, source, header(version, ("192.168.1.1", port)))


@pytest.mark.parametrize(
    "dst",
    [
        "127.0.0.9",  # plain IPv4 outside 127.0.0.0/30
        "::ffff:127.0.0.9",  # the same, IPv4-mapped in a TCP6 header
        "2002:7f00:9::1",  # the same, 6to4
        "::ffff:10.0.0.1",
        "::1",
        "fd00:ec2::254",
        "fe80::1",
    ],
)
@pytest.mark.parametrize("version", [1, 2])
def test_loopback_outside_the_allowed_networks_is_refused(rig, dst, version):
    refused(rig, "s3", header(version, (dst, rig.sink.sock.getsockname()[1])))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),
        pytest.param(V2_SIGNATURE + b"\x20\x00\x00\x00", id="v2-local"),
    ],
)
def test_headers_without_a_destination_are_refused(rig, raw):
    # HAProxy then keeps the frontend's own address as the destination: never a target.
    refused(rig, "s2", raw)


def test_v2_proxy_command_without_addresses_is_refused_by_haproxy(rig):
    # HAProxy 2.6 calls PROXY + AF_UNSPEC an invalid header and closes at the handshake.
    refused(rig, "s2", V2_SIGNATURE + b"\x21\x00\x00\x00", by_rule=False)


def test_connection_without_proxy_header_reaches_nothing(rig):
    accepts = [listener.accepts for listener in rig.listeners()]
    attempts = rig.node_of("s1").counter("egress_s1", "dst", "connect")
    reply = through(rig, "s1", b"EHLO smuggled\r\n")
    assert b"220" not in reply
    for listener in rig.listeners():
        listener.barrier()
    assert [listener.accepts for listener in rig.listeners()] == accepts
    assert rig.node_of("s1").counter("egress_s1", "dst", "connect") == attempts


def test_proxied_source_address_appears_in_the_log(rig):
    port = rig.sink.sock.getsockname()[1]
    through(rig, "s2", encode(1, src=("127.0.0.77", 41234), dst=("127.0.0.1", port)))
    node = rig.node_of("s2")
    assert wait_for(lambda: f"127.0.0.77:41234 egress_s2 egress_s2/dst dst=127.0.0.1:{port}"
                    in node.log())


# --- health -------------------------------------------------------------------------------


async def test_health_endpoint_answers_on_every_node(rig):
    port = rig.policy.proxy.health_port
    for node in rig.policy.proxy.nodes.values():
        assert await probe(node.address, port, timeout=IO_TIMEOUT) is True


def test_health_endpoint_speaks_http(rig):
    address = (NODE_ADDRESS["n1"], rig.policy.proxy.health_port)
    for path, status in (("/health", b"200"), ("/other", b"404")):
        with socket.create_connection(address, timeout=IO_TIMEOUT) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert conn.recv(100).split(b" ")[1] == status


async def test_draining_a_node_fails_its_health(rig):
    node, port = rig.nodes["n2"], rig.policy.proxy.health_port
    try:
        node.command("disable server drain/in_service")
        assert await probe(NODE_ADDRESS["n2"], port, timeout=IO_TIMEOUT) is False
        assert await probe(NODE_ADDRESS["n1"], port, timeout=IO_TIMEOUT) is True
    finally:
        node.command("enable server drain/in_service")
    assert await probe(NODE_ADDRESS["n2"], port, timeout=IO_TIMEOUT) is True


async def test_probe_is_false_once_haproxy_stops(rig):
    # A node of its own (other ports), so stopping it leaves the shared rig alone.
    port = free_port("127.0.0.30")
    text = policy_text(frontend_port=free_port("127.0.0.2", avoid=[port]), health_port=port,
                       sink_port=25)
    text = text.replace('address = "127.0.0.20"', 'address = "127.0.0.30"')
    config = render_haproxy_config(parse_policy(text), "n1", stats_socket=None)
    with running_haproxy(config, rig.run_dir, name="stopping") as proxy:
        assert await probe("127.0.0.30", port, timeout=IO_TIMEOUT) is True
        proxy.stop()
        assert not proxy.running
    assert await probe("127.0.0.30", port, timeout=IO_TIMEOUT) is False


async def _serve_once(reply: bytes | None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if reply is None:
            await reader.read()  # say nothing until the prober gives up and closes
        else:
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"HTTP/1.0 503 Service Unavailable\r\n\r\n", id="503"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="bad-code"),
        pytest.param(b"SSH-2.0-OpenSSH\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK" + b"x" * 5000 + b"\r\n", id="endless-line"),
        pytest.param(b"", id="closed"),
        pytest.param(None, id="silent"),
    ],
)
async def test_probe_is_false_for_anything_but_200(reply):
    server, port = await _serve_once(reply)
    async with server:
        assert await probe("127.0.0.1", port, timeout=0.5) is False


async def test_probe_accepts_a_plain_200():
    server, port = await _serve_once(b"HTTP/1.0 200 OK\r\n\r\n")
    async with server:
        assert await probe("127.0.0.1", port, timeout=IO_TIMEOUT) is True


async def test_probe_of_a_closed_port_is_false():
    assert await probe("127.0.0.1", free_port(), timeout=IO_TIMEOUT) is False


# --- reload -------------------------------------------------------------------------------


def test_seamless_reload_keeps_open_sessions_and_takes_new_ones(rig):
    port = rig.sink.sock.getsockname()[1]
    health_port = free_port("127.0.0.31")
    text = policy_text(frontend_port=free_port("127.0.0.2", avoid=[health_port]),
                       health_port=health_port, sink_port=port)
    text = text.replace('address = "127.0.0.20"', 'address = "127.0.0.31"')
    policy = parse_policy(text)
    config = render_haproxy_config(policy, "n1", stats_socket=None)
    frontend = policy.frontend(policy.sources["s1"])
    assert frontend is not None
    with running_haproxy(config, rig.run_dir, name="reloading", master_worker=True) as proxy:
        with socket.create_connection(frontend, timeout=IO_TIMEOUT) as open_session:
            open_session.sendall(header(2, ("127.0.0.1", port)))
            assert open_session.recv(100) == b"220 sink ready\r\n"
            proxy.reload()
            # The session opened before the reload still carries traffic ...
            open_session.sendall(b"NOOP\r\n")
            assert open_session.recv(100) == b"250 NOOP\r\n"
        # ... and the new worker accepts new ones.
        with socket.create_connection(frontend, timeout=IO_TIMEOUT) as fresh:
            fresh.sendall(header(1, ("127.0.0.1", port)))
            assert fresh.recv(100) == b"220 sink ready\r\n"
        assert rig.sink.peers[-1][0] == "127.0.0.2"


def test_v2_header_with_tlvs_is_accepted(rig):
    port = rig.sink.sock.getsockname()[1]
    base = encode(2, src=("127.0.0.1", 40000), dst=("127.0.0.1", port))
    tlv = b"\x05\x00\x03abc"
    raw = base[:14] + struct.pack("!H", 12 + len(tlv)) + base[16:] + tlv
    assert through(rig, "s4", raw).startswith(b"220 sink ready")
    assert rig.sink.peers[-1][0] == "127.0.0.5"


# --- address families ---------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            return False
        return True


def test_family_rules_refuse_what_the_source_cannot_reach(rig):
    """An IPv4 source refuses IPv6 destinations and an IPv6 source IPv4 ones.

    The destinations are allowed by network and port, so only the per-frontend
    family rule can refuse them. (HAProxy reads ::/96, ::ffff:0:0/96 and 2002::/16
    destinations as IPv4, so ::1 cannot serve as an IPv6 sink here: no IPv6
    delivery over loopback is possible, and a mismatched family could never leave
    the host anyway, since a socket of one family cannot bind the other's address.)
    """
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    port = rig.sink.sock.getsockname()[1]
    frontend_port = free_port("127.0.0.2", avoid=[port])
    health_port = free_port("127.0.0.32", avoid=[frontend_port, port])
    policy = parse_policy("\n".join([
        "local_only = true",
        'default_pool = "p"',
        "[proxy]",
        f"frontend_port = {frontend_port}",
        f"health_port = {health_port}",
        f"allowed_ports = [{port}]",
        'allow_networks = ["127.0.0.0/8"]',
        "[proxy.nodes.n6]", 'az = "az-6"', 'address = "127.0.0.32"',
        "[sources.v6]", 'ip = "2001:db8::6"', 'local_ip = "::1"', 'node = "n6"',
        'ehlo = "v6.example.com"',
        "[sources.v4]", 'ip = "192.0.2.4"', 'local_ip = "127.0.0.2"', 'node = "n6"',
        'ehlo = "v4.example.com"',
        "[pools.p]", 'sources = ["v6", "v4"]',
    ]))
    config = render_haproxy_config(policy, "n6", stats_socket=f"{rig.run_dir}/n6.sock")
    public6 = ("2a00:1450:4001:81c::1b", port)  # named only; see cannot_leak()

    def send(source: str, raw: bytes) -> bytes:
        frontend = policy.frontend(policy.sources[source])
        assert frontend is not None
        with socket.create_connection(frontend, timeout=IO_TIMEOUT) as conn:
            conn.sendall(raw)
            with contextlib.suppress(ConnectionResetError):
                return conn.recv(100)
        return b""

    with running_haproxy(config, rig.run_dir, name="n6") as node:
        to4 = encode(2, src=("127.0.0.1", 40000), dst=("127.0.0.1", port))
        to6 = encode(2, src=("2001:db8::1", 40000), dst=public6)
        assert send("v4", to4) == b"220 sink ready\r\n"  # the node works
        assert rig.sink.peers[-1][0] == "127.0.0.2"
        accepts = rig.sink.accepts
        cannot_leak("::1", to4)
        cannot_leak("127.0.0.2", to6)
        assert send("v6", to4) == b""
        assert send("v4", to6) == b""
        assert wait_for(lambda: node.counter("egress_v6", "FRONTEND", "dses") == 1)
        assert wait_for(lambda: node.counter("egress_v4", "FRONTEND", "dses") == 1)
        assert node.counter("egress_v6", "dst", "connect") == 0
        assert node.counter("egress_v4", "dst", "connect") == 1  # the working one
        rig.sink.barrier()
        assert rig.sink.accepts == accepts


# --- why the rules live in the session stage ----------------------------------------------


def test_connection_stage_rules_cannot_see_the_proxy_destination(rig):
    """HAProxy fact the config relies on: `tcp-request connection` runs before the
    PROXY header is read, so a rule there on the destination port never matches the
    header's. If this ever fails, the stage HAProxy reads the header in has moved."""
    port = rig.sink.sock.getsockname()[1]
    frontend_port = free_port("127.0.0.2", avoid=[port])
    config = "\n".join([
        "defaults", "    mode tcp", "    timeout connect 5s", "    timeout client 10s",
        "    timeout server 10s",
        "frontend probe_stage",
        f"    bind 127.0.0.2:{frontend_port} accept-proxy",
        f"    tcp-request connection reject if {{ dst_port {port} }}",
        "    default_backend out",
        "backend out", "    source 127.0.0.2", "    server dst 0.0.0.0:0", "",
    ])
    with running_haproxy(config, rig.run_dir, name="stage"):
        before = rig.sink.accepts
        with socket.create_connection(("127.0.0.2", frontend_port), timeout=IO_TIMEOUT) as conn:
            conn.sendall(encode(2, src=("127.0.0.1", 40000), dst=("127.0.0.1", port)))
            assert conn.recv(100) == b"220 sink ready\r\n"
        assert rig.sink.accepts == before + 1
