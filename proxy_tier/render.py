"""Render an egress node's haproxy.cfg from the policy.

Each source placed on the node gets a frontend on (local_ip, frontend_port) that
accepts only PROXY-protocol connections, and a backend that connects from
local_ip to the destination the PROXY header names. The proxy must never be an
open relay or a way into the VPC, so every destination is checked before any
outbound connection is made: its port must be in `proxy.allowed_ports`, and its
address must not be private, loopback, link-local (the instance metadata
service), multicast or otherwise special, unless `proxy.allow_networks` lists
it, which only a `local_only` policy may do (test rigs allow loopback that way).

Where the check happens matters, and was established against HAProxy 2.6 (the
integration tests keep it honest): `tcp-request connection` rules run before
the PROXY header is read, so `dst` there is the frontend's own address and a
check there lets everything through. `tcp-request session` rules run once the
header is parsed and before the backend connects, so that is where we reject.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from quiver.policy import Policy, ProxyNode, Source
from quiver.routing.proxy_probe import HEALTH_URI
from quiver.routing.safety import forbidden_overlaps

# The sender gives up on a proxied connection after its own connect timeout; one
# HAProxy attempt plus one retry must fit inside the sender's 30 s default.
CONNECT_TIMEOUT = "10s"
RETRIES = 1
# RFC 5321 4.5.3.2.6: a client waits up to 10 minutes for the reply to the final
# "." of DATA, and servers may be as slow; idle timeouts shorter than that would
# cut accepted-but-unanswered transactions and cause duplicate deliveries.
IDLE_TIMEOUT = "10m"
# A half-closed connection (QUIT sent, peer slow to close) is not kept 10 minutes.
FIN_TIMEOUT = "30s"
# On reload the old worker keeps its open SMTP sessions; past this it exits anyway.
# Longer than one full DATA wait, so a reload does not cut a transaction short.
HARD_STOP_AFTER = "15m"
DEFAULT_MAXCONN_PER_SOURCE = 2000
HEALTH_MAXCONN = 64
HEALTH_TIMEOUT = "5s"
# Not under /run: that is emptied on reboot and haproxy would not start again.
DEFAULT_STATS_SOCKET = "/var/lib/haproxy/admin.sock"
# stdout ends up in journald under systemd and in the test's pipe: no syslog needed.
DEFAULT_LOG_TARGET = "stdout format raw local0 info"
# The instance metadata service: never reachable through the proxy, even when a
# test or an operator allows a private range that contains it.
METADATA_ADDRESSES = ("169.254.169.254", "fd00:ec2::254")

# Destinations a PROXY header must never make the node connect to. HAProxy also
# matches the IPv4 patterns against IPv4-mapped (::ffff:0:0/96), IPv4-compatible
# (::/96) and 6to4 (2002::/16) destinations, reading them as IPv4, so those cannot
# smuggle a private IPv4 address past the check. No IPv6 pattern may cover
# ::ffff:0:0/96: HAProxy compares IPv4 destinations to IPv6 patterns in that
# mapped form, so it would refuse them all. (Both verified with HAProxy 2.6.)
BLOCKED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network', including the unspecified 0.0.0.0"),
    ("10.0.0.0/8", "private (RFC 1918): the VPC itself"),
    ("100.64.0.0/10", "carrier-grade NAT shared space"),
    ("127.0.0.0/8", "loopback: the node's own services"),
    ("169.254.0.0/16", "link-local, including instance metadata 169.254.169.254"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, including broadcast 255.255.255.255"),
    ("::/96", "unspecified ::, loopback ::1 and IPv4-compatible addresses"),
    ("64:ff9b::/96", "NAT64: reaches IPv4 space, private included, through a gateway"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments, including Teredo (embeds IPv4)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4 (embeds IPv4)"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local, including instance metadata fd00:ec2::254"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)

# Anything interpolated into the config is a plain token: a newline or a space in
# a value could otherwise add a directive of its own.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/@%+=,-]+$")


class RenderError(ValueError):
    """The config cannot be rendered; the message says what to fix."""


def node_sources(policy: Policy, node: str) -> list[Source]:
    """The sources placed on proxy node `node`, in policy order."""
    _node(policy, node)
    return [s for s in policy.sources.values() if s.node == node and s.local_ip]


def render_all(
    policy: Policy,
    *,
    allow_networks: Sequence[str] | None = None,
    stats_socket: str | None = DEFAULT_STATS_SOCKET,
    log_target: str = DEFAULT_LOG_TARGET,
    run_as: str | None = None,
    chroot: str | None = None,
    maxconn_per_source: int = DEFAULT_MAXCONN_PER_SOURCE,
) -> dict[str, str]:
    """haproxy.cfg of every proxy node, keyed by node name (see render_haproxy_config)."""
    return {
        name: render_haproxy_config(
            policy, name, allow_networks=allow_networks, stats_socket=stats_socket,
            log_target=log_target, run_as=run_as, chroot=chroot,
            maxconn_per_source=maxconn_per_source,
        )
        for name in policy.proxy.nodes
    }


def render_haproxy_config(
    policy: Policy,
    node: str,
    *,
    allow_networks: Sequence[str] | None = None,
    stats_socket: str | None = DEFAULT_STATS_SOCKET,
    log_target: str = DEFAULT_LOG_TARGET,
    pidfile: str | None = None,
    run_as: str | None = None,
    chroot: str | None = None,
    maxconn_per_source: int = DEFAULT_MAXCONN_PER_SOURCE,
) -> str:
    """The haproxy.cfg of proxy node `node`.

    allow_networks replaces `policy.proxy.allow_networks` when given (None: the
    policy's); either way, ranges the node blocks are allowed only for a local_only
    policy. stats_socket None leaves the admin socket out. run_as sets user
    and group after binding; chroot confines the workers. Raises RenderError.
    """
    tier = policy.proxy
    proxy_node = _node(policy, node)
    sources = node_sources(policy, node)
    allowed = _allowed_networks(tier.allow_networks if allow_networks is None else allow_networks)
    if not policy.local_only:
        _refuse_special_allows(allowed)
    ports = tier.allowed_ports
    for port, what in ((tier.frontend_port, "frontend_port"), (tier.health_port, "health_port")):
        if port in ports:
            raise RenderError(
                f"proxy.{what} {port} is also in proxy.allowed_ports: a PROXY header naming "
                "the node itself would loop; pick distinct ports"
            )
    if isinstance(maxconn_per_source, bool) or maxconn_per_source < 1:
        raise RenderError(f"maxconn_per_source must be a positive integer: {maxconn_per_source!r}")
    for value, what in (
        (stats_socket, "stats_socket"), (pidfile, "pidfile"), (run_as, "run_as"),
        (chroot, "chroot"),
    ):
        if value is not None:
            _token(value, what)
    for word in log_target.split(" "):
        _token(word, "log_target")

    port_list = " ".join(str(p) for p in ports)
    blocked = " ".join(net for net, _ in BLOCKED_NETWORKS)
    out: list[str] = []
    add = out.append
    add(f"# haproxy.cfg of Quiver egress node {node} ({proxy_node.az}), rendered from the")
    add(f"# policy by `python -m proxy_tier render --node {node}`: change the policy,")
    add("# not this file.")
    for s in sources:
        add(f"#   source {s.name}: leaves from {s.local_ip} (public {s.ip}, EHLO {s.ehlo})")
    add("")
    add("global")
    add("    # stdout: journald under systemd, the pipe in tests; no syslog daemon needed.")
    add(f"    log {log_target}")
    if stats_socket is not None:
        add("    # Root-only, admin level: `disable server drain/in_service` drains the node.")
        add(f"    stats socket {stats_socket} mode 600 level admin")
    if pidfile is not None:
        add(f"    pidfile {pidfile}")
    if run_as is not None:
        add("    # Workers drop root once the listeners are bound.")
        add(f"    user {run_as}")
        add(f"    group {run_as}")
    if chroot is not None:
        add(f"    chroot {chroot}")
    add("    # Room for every source's frontend at its own limit, plus the health listener.")
    add(f"    maxconn {maxconn_per_source * max(1, len(sources)) + HEALTH_MAXCONN}")
    add("    # After a reload the old worker finishes its SMTP sessions, which may wait")
    add("    # 10 minutes for the reply to DATA; past this it exits anyway.")
    add(f"    hard-stop-after {HARD_STOP_AFTER}")
    add("")
    add("defaults base")
    add("    log global")
    add("    # One attempt plus one retry must fit in the sender's own connect timeout.")
    add(f"    timeout connect {CONNECT_TIMEOUT}")
    add("    # RFC 5321 4.5.3.2: up to 10 minutes for the reply to DATA's final dot;")
    add("    # shorter would cut accepted transactions and cause duplicate deliveries.")
    add(f"    timeout client {IDLE_TIMEOUT}")
    add(f"    timeout server {IDLE_TIMEOUT}")
    add("")
    add("# Every egress frontend takes its rules from here, so no frontend can lack them.")
    add("defaults egress_in from base")
    add("    mode tcp")
    add("    # Logs the PROXY header's destination: which MX each connection went to.")
    add('    log-format "%ci:%cp %ft %b/%s dst=%[dst]:%[dst_port] %Tw/%Tc/%Tt %B %ts '
        '%ac/%fc/%bc/%sc/%rc"')
    add("    # Per source: a flood through one source cannot take the others' connections.")
    add(f"    maxconn {maxconn_per_source}")
    add("    # A half-closed session (QUIT sent, peer slow to close) is not kept 10 minutes.")
    add(f"    timeout client-fin {FIN_TIMEOUT}")
    add(_safety_comment())
    add(f"    acl dst_blocked dst {blocked}")
    if allowed:
        add("    # Allowed although special, by proxy.allow_networks (never in production).")
        add(f"    acl dst_allowed dst {' '.join(allowed)}")
    add("    # Session stage: the first where dst is the PROXY header's destination")
    add("    # (connection rules still see our own address); nothing has connected yet.")
    add("    # Only the allowed ports (SMTP): anything else would make this an open relay.")
    add(f"    tcp-request session reject unless {{ dst_port {port_list} }}")
    add("    tcp-request session reject if dst_blocked" + (" !dst_allowed" if allowed else ""))
    add("")
    add("# Every egress backend checks again before it connects, in case a frontend")
    add("# without the rules above ever routes here.")
    add("defaults egress_out from base")
    add("    mode tcp")
    add("    # One quick retry at most: the sender retries elsewhere, with backoff.")
    add(f"    retries {RETRIES}")
    add(f"    timeout server-fin {FIN_TIMEOUT}")
    add(f"    acl dst_blocked dst {blocked}")
    if allowed:
        add(f"    acl dst_allowed dst {' '.join(allowed)}")
    add(f"    tcp-request content reject unless {{ dst_port {port_list} }}")
    add("    tcp-request content reject if dst_blocked" + (" !dst_allowed" if allowed else ""))
    add("")
    add("# Per source: bind accepts PROXY-protocol connections only (accept-proxy); the")
    add("# family rule refuses destinations the source's address family cannot reach")
    add("# (an IPv4 source: IPv4 and IPv4-mapped destinations only); the backend leaves")
    add("# from the source's address to the destination the header named (0.0.0.0:0).")
    for s in sources:
        add(_source_block(s, tier.frontend_port))
    add(_health_block(proxy_node, tier.health_port))
    return "\n".join(out) + "\n"


def _safety_comment() -> str:
    lines = [
        "    # Never connect to these, whatever a PROXY header says. IPv4 patterns also",
        "    # match ::ffff:a.b.c.d, ::a.b.c.d and 6to4 destinations (read as IPv4).",
    ]
    for net, why in BLOCKED_NETWORKS:
        lines.append(f"    #   {net:<16} {why}")
    return "\n".join(lines)


def _source_block(source: Source, frontend_port: int) -> str:
    assert source.local_ip is not None
    local = ipaddress.ip_address(source.local_ip)
    name = _token(f"egress_{source.name}", "source name")
    # Brackets: HAProxy would read the last group of a bare IPv6 address as a port.
    bind = f"[{local}]" if local.version == 6 else str(local)
    family_rule = "reject unless" if local.version == 4 else "reject if"
    return "\n".join([
        f"frontend {name} from egress_in",
        f"    bind {bind}:{frontend_port} accept-proxy",
        f"    tcp-request session {family_rule} {{ dst 0.0.0.0/0 }}",
        f"    default_backend {name}",
        f"backend {name} from egress_out",
        f"    source {bind}",
        "    server dst 0.0.0.0:0",
        "",
    ])


def _health_block(node: ProxyNode, port: int) -> str:
    address = ipaddress.ip_address(node.address)
    bind = f"[{address}]" if address.version == 6 else str(address)
    return "\n".join([
        "# Senders probe GET /health before choosing this node's sources: 200 while the",
        "# node serves, 503 once an operator drains it (`disable server drain/in_service`",
        "# on the stats socket; `enable server` undoes it, and so does a reload).",
        "frontend health from base",
        "    mode http",
        f"    bind {bind}:{port}",
        f"    maxconn {HEALTH_MAXCONN}",
        f"    timeout client {HEALTH_TIMEOUT}",
        f"    timeout http-request {HEALTH_TIMEOUT}",
        f"    monitor-uri {HEALTH_URI}",
        "    monitor fail if { nbsrv(drain) eq 0 }",
        "    http-request deny deny_status 404",
        "backend drain from base",
        "    # Never connected to: the server only carries the node's in-service state.",
        "    server in_service 127.0.0.1:9",
        "",
    ])


def _node(policy: Policy, node: str) -> ProxyNode:
    nodes = policy.proxy.nodes
    if node in nodes:
        return nodes[node]
    if not nodes:
        raise RenderError(f"unknown proxy node {node!r}: the policy defines no [proxy.nodes]")
    raise RenderError(f"unknown proxy node {node!r}; known nodes: {', '.join(sorted(nodes))}")


def _allowed_networks(networks: Sequence[str]) -> list[str]:
    if isinstance(networks, str):
        raise RenderError("allow_networks must be a list of networks, not one string")
    out: list[str] = []
    for raw in networks:
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except (ValueError, TypeError):
            raise RenderError(f"allow_networks: not a network: {raw!r}") from None
        for meta in METADATA_ADDRESSES:
            if ipaddress.ip_address(meta) in net:
                raise RenderError(
                    f"allow_networks: {net} contains the instance metadata address {meta}, "
                    "which the proxy must never reach; allow a narrower network"
                )
        out.append(str(net))
    return out


def _overlap(
    a: ipaddress.IPv4Network | ipaddress.IPv6Network,
    b: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    # Typed per family: networks of different families never overlap.
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.overlaps(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.overlaps(b)
    return False


def _refuse_special_allows(networks: Sequence[str]) -> None:
    """Only a local_only policy may open what the node blocks: for any other, an allow
    rule over a private, loopback or metadata range would let a PROXY header reach the
    VPC. Checked against the sender's forbidden table and this file's blocked list."""
    for raw in networks:
        net = ipaddress.ip_network(raw)
        hits = {str(n): why for n, why in forbidden_overlaps(net)}
        for blocked, why in BLOCKED_NETWORKS:
            other = ipaddress.ip_network(blocked)
            if _overlap(net, other):
                hits.setdefault(str(other), why)
        if hits:
            raise RenderError(
                f"allow_networks: {net} opens destinations the proxy must refuse "
                f"({'; '.join(f'{n}: {why}' for n, why in hits.items())}); only a policy "
                "with local_only = true may allow them"
            )


def _token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise RenderError(f"{what} {value!r} may hold only letters, digits and _.:/@%+=,-")
    return value
