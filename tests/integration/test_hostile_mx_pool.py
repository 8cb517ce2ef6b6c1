"""Hostile domains in a pool's mail, through real HAProxy egress nodes (the production
path): two domains whose MXes resolve to forbidden addresses (10/8, the instance
metadata address) queued together with good mail. The good mail is delivered at its
first attempt with no deferral, the hostile mail is bounced 5.4.4 within seconds with
the address class named, and no proxy is marked down: the destination check runs before
a source is chosen and is never a proxy's or a source's failure.

The local stack's MX, two haproxy nodes (test_egress's layout) and a DNS server of this
test's own, which the sender is pointed at, serving the demo domain and the hostile ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from haproxy_util import require_haproxy
from stackrig import Running, enqueue, running_stack
from test_egress import (
    STACK_MAX_AGE,
    assert_all_delivered_once,
    batch,
    egress_nodes,
    fast_retry,
    finals_of,
    interleave,
)

from quiver.devstack.servers.dns import DnsServer, Zone, start_dns
from quiver.devstack.stack import MX_HOSTS

pytestmark = pytest.mark.integration

HOSTILE = {  # domain: (its MX host, the address the MX host resolves to, its class)
    "private.hostile.test": ("mx.private.hostile.test", "10.1.2.3",
                             "private (10.0.0.0/8)"),
    "metadata.hostile.test": ("mx.metadata.hostile.test", "169.254.169.254",
                              "link-local / instance metadata (169.254.0.0/16)"),
}
BOUNCED_WITHIN_MS = 10_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_haproxy()
    with running_stack(tmp_path_factory.mktemp("hostile"), max_age=STACK_MAX_AGE,
                       start_sender=False) as running:
        yield running


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    zone = Zone()
    zone.add_mx("alpha.test", MX_HOSTS[0], 10)
    zone.add_a(MX_HOSTS[0], "127.0.0.1")
    for domain, (host, address, _) in HOSTILE.items():
        zone.add_mx(domain, host, 10)
        zone.add_a(host, address)
    server = start_dns(zone, prefer="builtin")
    try:
        yield server
    finally:
        server.stop()


def test_hostile_domains_bounce_at_once_and_the_pools_good_mail_is_untouched(
        stack: Running, dns: DnsServer) -> None:
    good = batch("hg", "pa", 60, domains=("alpha.test",))
    hostile = batch("hx", "pa", 20, domains=tuple(HOSTILE))
    # Queued together: each hostile message sits among good ones.
    mixed = interleave(good[:20], hostile) + good[20:]
    nameserver = f"{dns.address[0]}:{dns.address[1]}"
    with egress_nodes(stack, "hostile", edits=[fast_retry(max_age="20s")]) as egress:
        process = stack.stack.start_sender(name="hostile", config=egress.config,
                                           extra=["--nameserver", nameserver])
        try:
            enqueue(stack, mixed)
            events = finals_of(stack, mixed, timeout=90)
            healthy = {name: node.healthy() for name, node in egress.nodes.items()}
        finally:
            assert stack.stack.stop_sender(process) == 0
        log = (stack.stack.root / "logs" / "hostile.log").read_text()

    good_ids = {m.id for m in good}
    good_events = [e for e in events if e["id"] in good_ids]
    hostile_events = [e for e in events if e["id"] not in good_ids]
    deferred = [e for e in events if e["event"] == "deferred"]
    bounced_ms = sorted(e["queued_ms"] for e in hostile_events if e["event"] == "bounced")
    print(f"good: {sum(e['event'] == 'delivered' for e in good_events)} delivered, "
          f"{len(deferred)} deferred events in all; hostile: {len(bounced_ms)} bounced, "
          f"queued_ms max {bounced_ms[-1] if bounced_ms else '-'}")

    # Good mail: delivered once each, at the first attempt, never deferred.
    finals = assert_all_delivered_once(good_events, good)
    assert {e["attempt"] for e in finals} == {1}
    assert not deferred, [e["response"]["text"] for e in deferred][:3]
    # Hostile mail: one bounce each, 5.4.4, naming the address and its class, decided
    # before any source or proxy was involved, within seconds of being queued.
    assert len(hostile_events) == len(hostile)
    for e in hostile_events:
        assert e["event"] == "bounced", e
        assert e["response"]["code"] == 550 and e["response"]["enhanced"] == "5.4.4", e
        host, address, kind = HOSTILE[e["rcpt"].rpartition("@")[2]]
        assert f"{host} {address} is {kind}" in e["response"]["text"], e["response"]
        assert (e["source"], e["proxy"]) == (None, None), e
        assert e["queued_ms"] <= BOUNCED_WITHIN_MS, e
    # No proxy was blamed: none marked down, both healthy.
    assert "is down" not in log, [line for line in log.splitlines() if "is down" in line][:3]
    assert healthy == {"e1": True, "e2": True}
