"""The sender's real path into the interop receivers, and the checks made on what arrived.

    moto (SQS, S3) → `quiver sender` → HAProxy egress nodes (PROXY protocol)
        → MX found in the local DNS → Postfix / Exim / Haraka on loopback

The local stack runs as in the other integration tests (moto server, DNS, its
export pump turning event batches into S3 objects), with the interop sites added to
its zone before it starts: each receiver's domain and a second domain it does not
accept mail for (`elsewhere.<domain>`) have an MX record naming the receiver's host.
A policy variant of the stack's own swaps its egress part for two sources on two
haproxy nodes of these tests and points delivery at the receivers' common port;
TLS stays verified against the stack's CA, which issued the receivers' certificates.

Exim looks DKIM keys up through the C library's resolver, which only asks port 53:
`resolver_for_exim` serves the same zone there, on a loopback address of its own.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path

import dkim
import dns.resolver
from stackrig import Running

from interop.receivers import Copy, Site
from quiver.client import OutboundMessage
from quiver.devstack.export_pump import ExportPump, Tally
from quiver.devstack.haproxy import find_haproxy, start_nodes, stop_nodes
from quiver.devstack.processes import free_port_on
from quiver.devstack.samples import render
from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.stack import LocalStack, with_egress
from quiver.events import FINAL_EVENTS

POSTFIX = Site("postfix", "postfix.interop.test", "mx.postfix.interop.test", "127.0.0.31")
# The same Postfix instance, on a listener that withdraws 8BITMIME.
POSTFIX_LEGACY = Site("postfix-legacy", "postfix-legacy.interop.test",
                      "mx.postfix-legacy.interop.test", "127.0.0.32")
EXIM = Site("exim", "exim.interop.test", "mx.exim.interop.test", "127.0.0.33")
HARAKA = Site("haraka", "haraka.interop.test", "mx.haraka.interop.test", "127.0.0.34")
# An Exim that takes few connections at once (the per-MX connection cap test).
EXIM_CAPPED = Site("exim-capped", "exim-capped.interop.test", "mx.exim-capped.interop.test",
                   "127.0.0.35")
SITES = (POSTFIX, POSTFIX_LEGACY, EXIM, HARAKA, EXIM_CAPPED)
# Candidate loopback addresses for the port-53 resolver Exim asks (the first free one).
EXIM_RESOLVER_IPS = ("127.0.53.53", "127.0.53.54", "127.0.53.55")

# Two sources on two haproxy nodes; pool solo has one, pool pair both.
SOURCES = {"i1": ("127.0.0.2", "e1"), "i2": ("127.0.0.3", "e2")}
NODES = {"e1": ("az-1", "127.0.0.14"), "e2": ("az-2", "127.0.0.15")}
POOLS = {"solo": ("i1",), "pair": ("i1", "i2")}
# Long enough that mail deferred by a refused connection still gets its retries in.
STACK_MAX_AGE = "120s"
FROM_RSA = "hello@news.quiver-demo.test"  # signed rsa-sha256 (selector q1)
FROM_ED25519 = "alerts@alerts.quiver-demo.test"  # signed ed25519-sha256 (selector e1)
ENVELOPE_FROM = "bounces@news.quiver-demo.test"
# RFC 5322 2.1.1: at most 998 characters per line, CRLF excluded.
MAX_LINE = 998
LONG_LINE_CHARS = 1500
EIGHT_BIT_TEXT = (
    "Grüße aus Zürich: the crème brûlée costs 5 €, the smørrebrød 40 kr.\r\n"
    "Ελληνικά, русский, 日本語 — one line each, all UTF-8.\r\n"
)


def interop_zone() -> Zone:
    """The interop sites' MX and A records, for the local stack to serve with its own."""
    zone = Zone()
    for site in SITES:
        zone.add_mx(site.domain, site.mx, 10)
        zone.add_mx(site.relay_domain, site.mx, 10)
        zone.add_a(site.mx, site.ip)
    return zone


@contextmanager
def interop_stack(root: Path) -> Iterator[Running]:
    """The local stack (moto, DNS with the interop zone, export pump), no sender yet."""
    stack = LocalStack(root, max_age=STACK_MAX_AGE, zone=interop_zone()).start()
    assert stack.deployment is not None
    tally = Tally()
    pump = ExportPump(sqs=stack.client("sqs"), deployment=stack.deployment, on_records=tally,
                      environ=stack.env())
    pump.start()
    try:
        yield Running(stack, pump, tally, start_sender=False)
    finally:
        pump.stop()
        stack.stop()


@contextmanager
def resolver_for_exim(stack: Running) -> Iterator[str]:
    """The stack's zone (DKIM keys included) served on port 53 of a loopback address."""
    errors = []
    server: DnsServer | None = None
    for ip in EXIM_RESOLVER_IPS:
        try:
            server = start_dns(stack.stack.zone, host=ip, port=53)
            break
        except (OSError, RuntimeError) as error:
            errors.append(f"{ip}: {error}")
    if server is None:
        raise RuntimeError(f"no loopback address had port 53 free: {'; '.join(errors)}")
    try:
        yield server.address[0]
    finally:
        server.stop()


def egress_toml(*, frontend_port: int, health_port: int, mx_port: int) -> str:
    lines = [
        "[proxy]",
        "protocol = 2",
        f"frontend_port = {frontend_port}",
        f"health_port = {health_port}",
        f"allowed_ports = [{mx_port}]",
        'allow_networks = ["127.0.0.0/8"]',
    ]
    for node, (az, address) in NODES.items():
        lines += [f"[proxy.nodes.{node}]", f'az = "{az}"', f'address = "{address}"']
    for name, (ip, node) in SOURCES.items():
        lines += [f"[sources.{name}]", f'ip = "{ip}"', f'local_ip = "{ip}"', f'node = "{node}"',
                  f'ehlo = "{name}.quiver.local.test"']
    for pool, members in POOLS.items():
        lines += [f"[pools.{pool}]",
                  "sources = { " + ", ".join(f"{s} = 1" for s in members) + " }"]
    return "\n".join(lines) + "\n"


@contextmanager
def egress(stack: Running, name: str, *, mx_port: int) -> Iterator[Path]:
    """A policy variant sending through this module's haproxy nodes to `mx_port`.

    Yields the policy file; the nodes run until the block ends.
    """
    binary = find_haproxy()
    if binary is None:
        raise RuntimeError("haproxy is not installed (scripts/setup.sh installs it)")
    frontend = free_port_on([ip for ip, _ in SOURCES.values()], avoid=[mx_port])
    health = free_port_on([a for _, a in NODES.values()], avoid=[mx_port, frontend])
    layout = egress_toml(frontend_port=frontend, health_port=health, mx_port=mx_port)

    def edit(text: str) -> str:
        text = with_egress(text, layout).replace('default_pool = "shared"',
                                                 'default_pool = "solo"')
        # Every MX is reached on one port: the receivers' common one.
        text, n = re.subn(r"(?m)^port = \d+$", f"port = {mx_port}", text, count=1)
        assert n == 1, "the stack's policy has no [delivery] port line"
        return text

    config = stack.stack.policy_variant(name, edit)
    nodes = start_nodes(config, binary=binary,
                        run_dir=stack.stack.root / f"hap-{name}",
                        log_dir=stack.stack.root / "logs")
    try:
        yield config
    finally:
        stop_nodes(nodes)


@contextmanager
def sender(stack: Running, name: str, config: Path) -> Iterator[Path]:
    """A `quiver sender` process on `config`; yields its log; it must exit cleanly."""
    process = stack.stack.start_sender(name=name, config=config)
    try:
        yield stack.stack.root / "logs" / f"{name}.log"
    finally:
        assert stack.stack.stop_sender(process) == 0, f"sender {name} did not exit cleanly"


# --- the messages -------------------------------------------------------------------------


def _headers(mid: str, *, from_addr: str, to: list[str], subject: str) -> list[str]:
    domain = from_addr.rpartition("@")[2]
    return [
        f"From: Quiver Interop <{from_addr}>",
        f"To: {', '.join(to)}",
        f"Subject: {subject}",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: <{mid}@{domain}>",
        "MIME-Version: 1.0",
    ]


def ordinary(mid: str, to: list[str], *, from_addr: str = FROM_RSA, pool: str | None = None
             ) -> OutboundMessage:
    """The demo's multipart/alternative message: 7-bit, short lines."""
    raw = render(message_id=mid, from_addr=from_addr, to=to, subject=f"ordinary {mid}")
    return OutboundMessage(id=mid, sender=ENVELOPE_FROM, to=to, raw=raw, pool=pool)


def long_line_text() -> str:
    """Exactly LONG_LINE_CHARS characters of words, on one line."""
    words = " ".join(f"word{i}" for i in range(400))
    return words[:LONG_LINE_CHARS - 1] + "."


def long_line(mid: str, to: list[str]) -> OutboundMessage:
    """A 7-bit text message whose body is a single 1,500-character line."""
    lines = [*_headers(mid, from_addr=FROM_RSA, to=to, subject=f"long line {mid}"),
             "Content-Type: text/plain; charset=us-ascii",
             "Content-Transfer-Encoding: 7bit", "", long_line_text(), ""]
    return OutboundMessage(id=mid, sender=ENVELOPE_FROM, to=to,
                           raw="\r\n".join(lines).encode("ascii"))


def eight_bit(mid: str, to: list[str]) -> OutboundMessage:
    """A UTF-8 text message sent as 8bit."""
    head = [*_headers(mid, from_addr=FROM_RSA, to=to, subject=f"eight bit {mid}"),
            "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "", ""]
    raw = "\r\n".join(head).encode("ascii") + EIGHT_BIT_TEXT.encode("utf-8")
    return OutboundMessage(id=mid, sender=ENVELOPE_FROM, to=to, raw=raw)


# --- checks on what arrived ---------------------------------------------------------------


def copies_of(copies: list[Copy], msg: OutboundMessage) -> list[Copy]:
    """The stored copies of `msg` (by its Message-ID)."""
    return [c for c in copies if c.message_id.partition("@")[0] == msg.id]


def long_lines(raw: bytes) -> list[tuple[int, int]]:
    """(line number, length) of every line longer than RFC 5322 allows."""
    return [(n, len(line)) for n, line in enumerate(raw.split(b"\r\n"), start=1)
            if len(line) > MAX_LINE]


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def eight_bit_octets(raw: bytes) -> int:
    return sum(1 for b in raw if b > 0x7F)


def dkim_verify(raw: bytes, *, nameserver: str) -> tuple[bool, str]:
    """Verify the copy's DKIM signature with dkimpy (not the signer's code).

    Keys come from the local stack's DNS server ("host:port"). Returns (verified,
    what dkimpy said).
    """
    host, _, port = nameserver.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)

    def txt(name: bytes | str, timeout: int = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    notes: list[str] = []

    class Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger = logging.getLogger(f"interop.dkim.{id(notes)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Notes()
    logger.addHandler(handler)
    try:
        verified = bool(dkim.DKIM(raw, logger=logger).verify(dnsfunc=txt))
    except dkim.DKIMException as error:
        verified, notes = False, [*notes, f"{type(error).__name__}: {error}"]
    finally:
        logger.removeHandler(handler)
    failures = [n for n in notes if "fail" in n.lower() or "mismatch" in n.lower()
                or "error" in n.lower()]
    return verified, "; ".join(failures or notes[-2:])


def finals_by_recipient(events: list[dict], msgs: list[OutboundMessage]) -> dict[str, dict]:
    """The final event of each recipient of `msgs`; every recipient has exactly one."""
    finals = [e for e in events if e["event"] in FINAL_EVENTS]
    count = Counter((e["id"], e["rcpt"]) for e in finals)
    expected = {(m.id, r) for m in msgs for r in m.to}
    assert set(count) == expected, f"recipients without a final event: {expected - set(count)}"
    assert set(count.values()) == {1}, f"recipients with two finals: {count.most_common(3)}"
    return {e["rcpt"]: e for e in finals}
