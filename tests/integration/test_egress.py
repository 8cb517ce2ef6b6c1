"""The sender through real HAProxy egress nodes on loopback.

Two haproxy processes stand for two AZs (nodes e1 and e2, configs rendered by
proxy_tier.render through quiver.devstack.haproxy, as the local stack does). Four
sources leave from 127.0.0.2-127.0.0.5, and each pool has a source in each AZ:

    pool pa: a1 127.0.0.2 (e1, weight 3), a2 127.0.0.3 (e2, weight 1)
    pool pb: b1 127.0.0.4 (e1, weight 1), b2 127.0.0.5 (e2, weight 1)
    pool solo: a2 alone, so an e2 outage leaves it no source

The local stack's MX records the peer address of every delivery: the address
HAProxy connected from. The tests assert on those records and on the exported
events: which pool's IPs carried which mail, the weights, that losing an AZ loses
no mail, and whether a failed connection is blamed on the proxy or the destination.
Every haproxy process a test starts is stopped when the test ends.

The local stack itself runs in HAProxy mode here (haproxy is installed): its own two
nodes (n1, n2 on 127.0.0.10/.11) carry its default policy's mail, which the first
tests check; the other tests swap its policy's egress part for the layout above.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from haproxy_util import require_haproxy
from stackrig import Running, enqueue, message, running_stack

from proxy_tier.render import render_haproxy_config
from quiver.client import OutboundMessage
from quiver.devstack.haproxy import (
    ENV_SWITCH,
    LOCAL_MAXCONN_PER_SOURCE,
    EgressNode,
    choose_haproxy,
    start_nodes,
    stop_nodes,
)
from quiver.devstack.processes import free_port, free_port_on
from quiver.devstack.stack import egress_toml as stack_egress
from quiver.devstack.stack import with_egress
from quiver.events import FINAL_EVENTS
from quiver.policy import load_policy, parse_policy
from quiver.routing.safety import DestinationGuard
from quiver.scheduler.connector import Connector, tls_context_for
from quiver.smtp.session import SessionError, SmtpSession, Target

pytestmark = pytest.mark.integration

SOURCES = {  # name: (address, node)
    "a1": ("127.0.0.2", "e1"),
    "a2": ("127.0.0.3", "e2"),
    "b1": ("127.0.0.4", "e1"),
    "b2": ("127.0.0.5", "e2"),
}
NODES = {"e1": ("az-1", "127.0.0.12"), "e2": ("az-2", "127.0.0.13")}
POOLS = {"pa": {"a1": 3, "a2": 1}, "pb": {"b1": 1, "b2": 1}, "solo": {"a2": 1}}
STACK_MAX_AGE = "60s"
# The prober looks every 2 s; a few rounds is plenty for a node to be seen up again.
RETURN_BATCHES = 20


def pool_ips(pool: str) -> set[str]:
    return {SOURCES[s][0] for s in POOLS[pool]}


def node_ips(node: str) -> set[str]:
    return {ip for ip, n in SOURCES.values() if n == node}


def egress_toml(*, frontend_port: int, health_port: int, allowed_ports: list[int]) -> str:
    lines = [
        "[proxy]",
        "protocol = 2",
        f"frontend_port = {frontend_port}",
        f"health_port = {health_port}",
        f"allowed_ports = {allowed_ports}",
        'allow_networks = ["127.0.0.0/8"]',
    ]
    for node, (az, address) in NODES.items():
        lines += [f"[proxy.nodes.{node}]", f'az = "{az}"', f'address = "{address}"']
    for name, (ip, node) in SOURCES.items():
        lines += [f"[sources.{name}]", f'ip = "{ip}"', f'local_ip = "{ip}"', f'node = "{node}"',
                  f'ehlo = "{name}.quiver.local.test"']
    for pool, weights in POOLS.items():
        members = ", ".join(f"{s} = {w}" for s, w in weights.items())
        lines += [f"[pools.{pool}]", f"sources = {{ {members} }}"]
    return "\n".join(lines) + "\n"


def fast_retry(*, site_backoff: str = "1s", max_age: str = STACK_MAX_AGE) -> Callable[[str], str]:
    """Deterministic, compressed retries (first 1 s, cap 2 s), as test_scheduler's."""
    def edit(text: str) -> str:
        return (text.replace("jitter = 0.2", "jitter = 0")
                    .replace('cap = "4s"', 'cap = "2s"')
                    .replace('site_backoff = "2s"', f'site_backoff = "{site_backoff}"')
                    .replace(f'max_age = "{STACK_MAX_AGE}"', f'max_age = "{max_age}"'))
    return edit


def with_routes(routes: dict[str, str]) -> Callable[[str], str]:
    entries = ", ".join(f'"{domain}" = "{target}"' for domain, target in routes.items())
    return lambda text: text.replace('command_timeout = "30s"\n',
                                     f'command_timeout = "30s"\nroutes = {{ {entries} }}\n', 1)


@dataclass
class Egress:
    config: Path
    nodes: dict[str, EgressNode]


@contextmanager
def egress_nodes(stack: Running, name: str, *, edits: list[Callable[[str], str]],
                 extra_ports: tuple[int, ...] = ()) -> Iterator[Egress]:
    """A policy variant with this file's egress layout, and its two haproxy nodes running."""
    binary = require_haproxy()
    assert stack.stack.mx is not None
    mx_port = stack.stack.mx.address[1]
    avoid = [mx_port, *extra_ports]
    frontend = free_port_on([ip for ip, _ in SOURCES.values()], avoid=avoid)
    health = free_port_on([a for _, a in NODES.values()], avoid=[*avoid, frontend])
    egress = egress_toml(frontend_port=frontend, health_port=health,
                         allowed_ports=[mx_port, *extra_ports])

    def edit(text: str) -> str:
        text = with_egress(text, egress).replace('default_pool = "shared"', 'default_pool = "pa"')
        for more in edits:
            text = more(text)
        return text

    config = stack.stack.policy_variant(name, edit)
    nodes = start_nodes(config, binary=binary,
                        run_dir=stack.stack.root / f"hap-{name}", log_dir=stack.stack.root / "logs")
    try:
        yield Egress(config, nodes)
    finally:
        stop_nodes(nodes)


@contextmanager
def sender(stack: Running, name: str, config: Path) -> Iterator[Path]:
    """A sender process on `config`, up and running; yields its log path; it must exit
    cleanly. Mail is enqueued only once it runs: max_age counts from the enqueue, and a
    sender slow to start on a loaded machine must not eat a test's short max_age."""
    process = stack.stack.start_sender(name=name, config=config)
    log = stack.stack.root / "logs" / f"{name}.log"

    def running() -> bool:
        assert process.poll() is None, f"sender {name} exited with {process.returncode}"
        return log.exists() and "sender running" in log.read_text()

    try:
        wait_until(running, timeout=120, what=f"sender {name} to start", interval=0.2)
        yield log
    finally:
        assert stack.stack.stop_sender(process) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_haproxy()
    with running_stack(tmp_path_factory.mktemp("egress"), max_age=STACK_MAX_AGE,
                       start_sender=False) as running:
        yield running


def batch(prefix: str, pool: str, count: int, *, start: int = 0,
          domains: tuple[str, ...] = ("alpha.test", "delta.test")) -> list[OutboundMessage]:
    return [message(i, [f"{prefix}{i}@{domains[i % len(domains)]}"], prefix=prefix, pool=pool)
            for i in range(start, start + count)]


def finals_of(stack: Running, msgs: list[OutboundMessage], *, timeout: float) -> list[dict]:
    """Every event of `msgs` once each recipient has its final event (or the timeout)."""
    recipients = sum(len(m.to) for m in msgs)
    return stack.events_for({m.id for m in msgs}, finals=recipients, timeout=timeout)


def assert_all_delivered_once(events: list[dict], msgs: list[OutboundMessage]) -> list[dict]:
    finals = [e for e in events if e["event"] in FINAL_EVENTS]
    per_rcpt = Counter((e["id"], e["rcpt"]) for e in finals)
    assert set(per_rcpt) == {(m.id, r) for m in msgs for r in m.to}, "a recipient has no final"
    assert set(per_rcpt.values()) == {1}, "a recipient has two final events"
    not_delivered = [e for e in finals if e["event"] != "delivered"]
    assert not not_delivered, not_delivered[:3]
    return finals


def mx_records(stack: Running, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """What the MX received for these recipient prefixes, in arrival order."""
    assert stack.stack.mx is not None
    return [r for r in stack.stack.mx.received()
            if any(t.startswith(prefixes) for t in r["rcpt_tos"])]


def assert_right_pool(records: list[dict[str, Any]], pools: dict[str, str]) -> None:
    """Each record came from an IP of the pool its recipient's prefix was sent to."""
    for record in records:
        for rcpt in record["rcpt_tos"]:
            pool = next(p for prefix, p in pools.items() if rcpt.startswith(prefix))
            assert record["peer_ip"] in pool_ips(pool), (rcpt, pool, record["peer_ip"])


def at(record: dict[str, Any]) -> float:
    """When the MX received it (its clock is this host's)."""
    return datetime.fromisoformat(record["at"]).timestamp()


def interleave(a: list[OutboundMessage], b: list[OutboundMessage]) -> list[OutboundMessage]:
    return [m for pair in zip(a, b, strict=True) for m in pair]


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str,
               interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_for_health(node: EgressNode, *, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not node.healthy():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


# --- the local stack's own HAProxy mode ---------------------------------------------------


def test_haproxy_mode_is_chosen_when_installed_unless_switched_off() -> None:
    binary = require_haproxy()
    assert choose_haproxy(None, {}) == binary
    assert choose_haproxy(True, {ENV_SWITCH: "0"}) == binary  # asking for it wins
    for off in ("0", "false", "off"):
        assert choose_haproxy(None, {ENV_SWITCH: off}) is None
    assert choose_haproxy(False, {}) is None


def test_direct_egress_policy_binds_each_source(stack: Running) -> None:
    assert stack.stack.policy_path is not None
    policy = parse_policy(with_egress(stack.stack.policy_path.read_text(), stack_egress(None)))
    assert not policy.proxy.nodes
    assert {(s.local_ip, s.node) for s in policy.sources.values()} == {
        ("127.0.0.2", None), ("127.0.0.3", None), ("127.0.0.4", None)}


def test_local_stack_sends_through_its_own_haproxy_nodes(stack: Running) -> None:
    local = stack.stack
    if local.egress_mode != "haproxy":
        pytest.skip(f"{ENV_SWITCH}=0: the local stack sends directly")
    assert local.policy_path is not None
    assert local.mx is not None
    policy = load_policy(local.policy_path)
    assert policy.proxy.allowed_ports == (local.mx.address[1],)
    assert policy.proxy.allow_networks == ("127.0.0.0/8",)
    # Pool shared spans both nodes ("AZs"); every source leaves from its own address.
    shared = [policy.sources[name] for name, _ in policy.pools["shared"].sources]
    assert {s.node for s in shared} == {"n1", "n2"} and len({s.az for s in shared}) == 2
    assert all(s.ip == s.local_ip for s in policy.sources.values())
    # The nodes run the configs production's renderer makes from this policy.
    for name, node in local.proxy_nodes.items():
        assert node.running and node.healthy()
        config = node.config_path.read_text()
        socket = next((line.split()[2] for line in config.splitlines()
                       if line.strip().startswith("stats socket")), None)
        assert config == render_haproxy_config(
            policy, name, stats_socket=socket, maxconn_per_source=LOCAL_MAXCONN_PER_SOURCE)

    shared_msgs, bulk_msgs = batch("ls", "shared", 40), batch("lb", "bulk", 10)
    with sender(stack, "local-egress", local.policy_path):
        enqueue(stack, shared_msgs + bulk_msgs)
        events = finals_of(stack, shared_msgs + bulk_msgs, timeout=60)
    finals = assert_all_delivered_once(events, shared_msgs + bulk_msgs)
    assert {(e["pool"], e["source"], e["source_ip"], e["proxy"]) for e in finals} == {
        ("shared", "local1", "127.0.0.2", "n1"), ("shared", "local2", "127.0.0.3", "n2"),
        ("bulk", "local3", "127.0.0.4", "n1")}
    peers = Counter((r["rcpt_tos"][0][:2], r["peer_ip"]) for r in mx_records(stack, ("ls", "lb")))
    assert peers == {("ls", "127.0.0.2"): 20, ("ls", "127.0.0.3"): 20, ("lb", "127.0.0.4"): 10}


# --- pools and weights --------------------------------------------------------------------


def test_each_pool_leaves_from_its_own_ips_and_weights_hold(stack: Running) -> None:
    pa, pb = batch("wa", "pa", 2000), batch("wb", "pb", 400)
    with egress_nodes(stack, "weights", edits=[]) as egress, sender(stack, "weights",
                                                                    egress.config):
        started = time.monotonic()
        enqueue(stack, pa + pb)
        events = finals_of(stack, pa + pb, timeout=240)
        took = time.monotonic() - started
    finals = assert_all_delivered_once(events, pa + pb)

    # The MX saw each pool's mail from that pool's IPs only, one copy per recipient.
    records = mx_records(stack, ("wa", "wb"))
    assert_right_pool(records, {"wa": "pa", "wb": "pb"})
    assert Counter(t for r in records for t in r["rcpt_tos"]) == Counter(
        {r: 1 for m in pa + pb for r in m.to})

    # Every delivered event names its source, that source's IP and its proxy node, and
    # the IP is the one the MX saw.
    peer = {r["rcpt_tos"][0]: r["peer_ip"] for r in records}
    for e in finals:
        ip, node = SOURCES[e["source"]]
        assert e["source"] in POOLS[e["pool"]], e
        assert (e["source_ip"], e["proxy"]) == (ip, node), e
        assert peer[e["rcpt"]] == ip, e

    # Weights: 3:1 in pool pa, 1:1 in pool pb, each source within 10% of its share.
    by_ip = Counter(r["peer_ip"] for r in records)
    print(f"{len(pa) + len(pb)} messages through two haproxy nodes in {took:.1f} s; "
          f"deliveries per IP: {dict(sorted(by_ip.items()))}")
    for pool, msgs in (("pa", pa), ("pb", pb)):
        total = sum(POOLS[pool].values())
        for source, weight in POOLS[pool].items():
            expected = len(msgs) * weight / total
            got = by_ip[SOURCES[source][0]]
            assert abs(got - expected) <= 0.1 * expected, (pool, source, got, expected)


# --- losing an AZ -------------------------------------------------------------------------


def test_losing_an_az_loses_no_mail_and_its_sources_return_after_restart(
        stack: Running) -> None:
    pools = {"za": "pa", "zb": "pb", "ya": "pa", "yb": "pb", "xa": "pa", "xb": "pb",
             "tarpit-za": "pa", "tarpit-zb": "pb"}
    e2_ips = node_ips("e2")
    with egress_nodes(stack, "azloss", edits=[fast_retry()]) as egress, sender(
            stack, "azloss", egress.config) as log:
        # Mid-run: e2 goes away with transactions in flight through it (the MX holds
        # tarpit-* messages 2 s before it answers their DATA), connections open through
        # it, and more mail arriving while the sender finds out.
        # Both pools' mail interleaved in the queue, so both are in flight at the stop.
        slow = interleave(batch("tarpit-za", "pa", 12), batch("tarpit-zb", "pb", 12))
        first = interleave(batch("za", "pa", 150), batch("zb", "pb", 150))
        rest = interleave(batch("za", "pa", 250, start=150), batch("zb", "pb", 250, start=150))
        during = slow + first + rest
        enqueue(stack, slow + first)
        every_ip = pool_ips("pa") | pool_ips("pb")

        def warmed() -> bool:
            records = mx_records(stack, ("za", "zb"))
            return len(records) >= 50 and {r["peer_ip"] for r in records} == every_ip

        wait_until(warmed, timeout=60, what="the first deliveries, from every source")
        egress.nodes["e2"].stop()
        stopped = time.time()
        enqueue(stack, rest)
        before_stop = Counter(r["peer_ip"] for r in mx_records(stack, ("za", "zb"))
                              if at(r) < stopped)

        def e2_connections_closed() -> bool:
            assert stack.stack.mx is not None
            peers = stack.stack.mx.stats()["peers"]
            return all(peers.get(ip, {}).get("current", 0) == 0 for ip in e2_ips)

        # The MX records a message before it answers its DATA, and the stop cut every
        # connection through e2: once the MX has seen each of them close, whatever e2
        # carried before the stop is recorded, and nothing more can come from its IPs.
        wait_until(e2_connections_closed, timeout=60, what="the MX to see e2's connections close")
        outage_from = len(mx_records(stack, tuple(pools)))
        during_events = finals_of(stack, during, timeout=120)
        # With e2 still down, new mail flows through e1 only.
        while_down = batch("ya", "pa", 100) + batch("yb", "pb", 100)
        enqueue(stack, while_down)
        down_events = finals_of(stack, while_down, timeout=120)
        outage_to = len(mx_records(stack, tuple(pools)))

        # e2 comes back on the same addresses: the prober finds it and its sources return.
        egress.nodes["e2"].start()
        restarted = time.time()
        after: list[OutboundMessage] = []
        for n in range(RETURN_BATCHES):
            more = batch("xa", "pa", 25, start=25 * n) + batch("xb", "pb", 25, start=25 * n)
            enqueue(stack, more)
            after += more
            finals_of(stack, more, timeout=60)
            if e2_ips <= {r["peer_ip"] for r in mx_records(stack, tuple(pools))[outage_to:]}:
                break
        after_events = finals_of(stack, after, timeout=60)
        sender_log = log.read_text()

    for events, msgs in ((during_events, during), (down_events, while_down),
                         (after_events, after)):
        assert_all_delivered_once(events, msgs)
    records = mx_records(stack, tuple(pools))
    assert_right_pool(records, pools)
    assert before_stop.keys() == pool_ips("pa") | pool_ips("pb"), before_stop  # all four used
    # After the stop nothing left through e2. (A tarpitted message whose DATA went out
    # before the stop may still be recorded from e2's IP: it was sent before, not after.)
    outage = Counter(r["peer_ip"] for r in records[outage_from:outage_to]
                     if not r["rcpt_tos"][0].startswith("tarpit-"))
    assert not e2_ips & outage.keys(), outage  # nothing left through the dead node
    assert node_ips("e1") <= outage.keys()
    back = [r for r in records[outage_to:] if r["peer_ip"] in e2_ips]
    assert e2_ips <= {r["peer_ip"] for r in back}, "e2's sources carried no mail after restart"

    # Figures: how long mail hit by the outage waited, and how soon e2 was used again.
    hit = {e["rcpt"] for e in during_events if e["event"] == "deferred"}
    hit_at = [at(r) for r in records if set(r["rcpt_tos"]) & hit]
    waited = f"{max(hit_at) - stopped:.1f} s" if hit_at else "-"
    print(f"AZ loss: {len(hit)} of {len(during)} messages deferred by the stop, the last of "
          f"them delivered {waited} after it; per IP before the stop "
          f"{dict(sorted(before_stop.items()))}, during the outage "
          f"{dict(sorted(outage.items()))}; first delivery from e2 "
          f"{min(at(r) for r in back) - restarted:.1f} s after its restart "
          f"({len(after)} messages sent after the restart)")
    assert "proxy e2 is down" in sender_log
    assert "proxy e2 is healthy again" in sender_log


# --- who is to blame: the destination or the proxy ----------------------------------------

BLAMES_DESTINATION = re.compile(
    r"destination 127\.0\.0\.1 closed the connection before its banner "
    r"\(proxy (e1|e2) is healthy\)")


def test_destination_refusing_is_blamed_on_the_destination_and_deferred(
        stack: Running) -> None:
    closed = free_port()  # nothing listens here: the proxy's connect is refused
    refused = batch("rf", "pa", 12, domains=("refused.test",))
    control = batch("rc", "pa", 24, domains=("alpha.test",))
    # max_age leaves a loaded machine time for every refused recipient's first try (one
    # that first fails within a retry delay of max_age expires with no deferral).
    edits = [fast_retry(site_backoff="4s", max_age="15s"),
             with_routes({"refused.test": f"127.0.0.1:{closed}"})]
    with egress_nodes(stack, "refusing", edits=edits, extra_ports=(closed,)) as egress, sender(
            stack, "refusing", egress.config):
        enqueue(stack, refused + control)
        events = finals_of(stack, refused + control, timeout=90)
        # Each probe has a 1 s timeout, which a loaded machine can miss once: a node
        # counts as in service if it answers healthy within a generous deadline.
        healthy = {name: wait_for_health(node) for name, node in egress.nodes.items()}

    finals = {e["rcpt"]: e for e in events if e["event"] in FINAL_EVENTS}
    assert len(finals) == len(refused) + len(control)
    # Mail to the refusing destination is deferred, never bounced, and expires at max_age.
    for m in refused:
        assert finals[m.to[0]]["event"] == "expired", finals[m.to[0]]
    # A deferral records a real try: a connection that failed (mail drained from the
    # queue by another's failure, or held by the backoff, was not tried: no event).
    deferred = [e for e in events if e["event"] == "deferred"]
    assert {e["rcpt"] for e in deferred} <= {m.to[0] for m in refused}
    for e in deferred:
        text = e["response"]["text"]
        # Blamed on the destination, with the proxy named healthy; never on the proxy.
        assert BLAMES_DESTINATION.search(text), text
        assert "unreachable or unhealthy" not in text
        assert e["proxy"] == SOURCES[e["source"]][1], e
        assert e["mx"] == "127.0.0.1", e
    # Each expiry carries that recipient's own last failure, or why it was never tried
    # (a sibling's failed connection, or the backoff after one; test_smtp_wire checks
    # that a backing-off site opens no new connection).
    expired = [finals[m.to[0]]["response"]["text"] for m in refused]
    for text in expired:
        assert BLAMES_DESTINATION.search(text), text
        assert "unreachable or unhealthy" not in text
    # The proxies stayed in service: both of pa's sources delivered the other mail.
    assert all(finals[m.to[0]]["event"] == "delivered" for m in control)
    assert {finals[m.to[0]]["source"] for m in control} == {"a1", "a2"}
    assert healthy == {"e1": True, "e2": True}
    print(f"refusing destination: {len(deferred)} deferrals for {len(refused)} recipients, "
          f"{sum(t.startswith('never attempted') for t in expired)} never attempted")


def test_dead_proxy_is_blamed_on_the_proxy_and_mail_goes_through_the_other_az(
        stack: Running) -> None:
    with egress_nodes(stack, "deadproxy", edits=[fast_retry()]) as egress, sender(
            stack, "deadproxy", egress.config) as log:
        # Warm up: every source has delivered, so connections through e2 are open and idle.
        warm = batch("dw", "pa", 40) + batch("dv", "pb", 40)
        enqueue(stack, warm)
        assert_all_delivered_once(finals_of(stack, warm, timeout=60), warm)
        assert {r["peer_ip"] for r in mx_records(stack, ("dw", "dv"))} == {
            ip for ip, _ in SOURCES.values()}

        egress.nodes["e2"].stop()  # its frontends now refuse connections
        pooled = batch("da", "pa", 60) + batch("db", "pb", 60)
        enqueue(stack, pooled)
        events = finals_of(stack, pooled, timeout=60)
        sender_log = log.read_text()

    # The pools' mail went through the other AZ at once: delivered, never deferred, and
    # at its first attempt (a dead proxy costs the message nothing).
    finals = assert_all_delivered_once(events, pooled)
    deferred = [e for e in events if e["event"] == "deferred"]
    assert not deferred, [e["response"]["text"] for e in deferred][:3]
    assert {e["attempt"] for e in finals} == {1}
    assert {(e["source"], e["proxy"]) for e in finals} == {("a1", "e1"), ("b1", "e1")}
    assert_right_pool(mx_records(stack, ("da", "db")), {"da": "pa", "db": "pb"})
    # Rerouted mail carries no trace of the failure in its events: the sender says it.
    assert "proxy e2 is down" in sender_log


def test_mail_with_no_source_left_waits_for_the_proxy_and_names_it(stack: Running) -> None:
    """Pool solo's only source sits on e2: while e2 is down its mail waits, untried (no
    event, no attempt counted, the reason kept with it), and it is delivered (never
    bounced) at its first attempt once e2 is back."""
    stranded = batch("ds", "solo", 5)

    def slow_first(text: str) -> str:
        # Retries 5 s apart, so the waiting copies are seen on the queue, delayed.
        return text.replace('first = "1s"', 'first = "5s"').replace('cap = "2s"', 'cap = "5s"')

    with egress_nodes(stack, "stranded", edits=[fast_retry(), slow_first]) as egress:
        egress.nodes["e2"].stop()
        with sender(stack, "stranded", egress.config) as log:
            # Only once the sender has found e2 down (its first probe) is the mail sent,
            # so every message waits because the pool has no source left.
            wait_until(lambda: "proxy e2 is down" in log.read_text(), timeout=30,
                       what="the sender to find e2 down")
            enqueue(stack, stranded)
            wait_until(lambda: delayed(stack) == len(stranded), timeout=60,
                       what="pool solo's mail to be put back to wait", interval=0.2)
            egress.nodes["e2"].start()
            events = finals_of(stack, stranded, timeout=60)

    finals = assert_all_delivered_once(events, stranded)
    assert {(e["source"], e["proxy"]) for e in finals} == {("a2", "e2")}
    assert {e["attempt"] for e in finals} == {1}
    assert [e for e in events if e["event"] == "deferred"] == []


def delayed(stack: Running) -> int:
    """Messages on the outbound queue waiting out a delay (re-enqueued for later)."""
    attrs = stack.stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.deployment.outbound_queue_url,
        AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesDelayed"])


async def test_connection_through_a_proxy_that_died_before_carrying_mail_is_no_ones_attempt(
        stack: Running) -> None:
    """A connection opened through e2 that carried no message yet, and then lost its proxy:
    the next message must not have an attempt counted against it (stage "closed", so the
    ready queue reconnects, finds the proxy dead and reroutes), as when the connection
    had already carried a message ("reused")."""
    assert stack.stack.mx is not None
    with egress_nodes(stack, "unused", edits=[]) as egress:
        policy = load_policy(egress.config)
        source = policy.sources["a2"]
        session = await SmtpSession.open(
            target=Target(mx_name="mx1.quiver.local.test", ip="127.0.0.1",
                          port=stack.stack.mx.address[1]),
            egress=Connector(policy).egress(source),
            guard=DestinationGuard(policy.delivery.allow_networks),
            tls_context=tls_context_for(policy), connect_timeout=5.0, command_timeout=10.0)
        try:
            assert session.is_open and session.messages_sent == 0
            egress.nodes["e2"].stop()
            # The close reaches the session's event loop; a loaded machine may take a
            # while, so the deadline is generous and only the condition ends the wait.
            deadline = asyncio.get_running_loop().time() + 30.0
            while session.is_open and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not session.is_open
            with pytest.raises(SessionError) as failed:
                await session.send(sender="bounces@news.quiver-demo.test",
                                   recipients=["unused@alpha.test"],
                                   message=b"Subject: x\r\n\r\nx\r\n")
        finally:
            await session.close()
    # Not "transaction" (no attempt counted); the ready queue reconnects once on a
    # "closed", finds the proxy dead and reroutes, as on a "reused".
    assert failed.value.stage == "closed", failed.value
