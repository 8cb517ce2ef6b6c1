"""Throttle precedence: the most specific rule wins, per limit; budgets are shared by key."""

from __future__ import annotations

import asyncio
import time

from quiver.policy import parse_policy
from quiver.scheduler.budget import ConnectionBudget, RateLimiter
from quiver.scheduler.throttle import Destination, describe, resolve

POLICY = parse_policy("""
default_pool = "p"
[sources.ip1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[sources.ip2]
ip = "192.0.2.2"
ehlo = "o2.example.com"
[pools.p]
sources = ["ip1", "ip2"]
[providers]
google = ["*.google.com"]

[[throttles]]            # 0: everyone, everywhere
source = "*"
max_connections = 20
max_messages_per_connection = 100

[[throttles]]            # 1: google, per provider
source = "*"
provider = "google"
max_connections = 50
max_rate = "300/s"

[[throttles]]            # 2: one domain of google's
source = "*"
domain = "example-gsuite.com"
max_rate = "10/s"

[[throttles]]            # 3: an exact source beats a wildcard source
source = "ip2"
provider = "google"
max_connections = 5

[[throttles]]            # 4: MX pattern
source = "*"
mx = "*.outlook.com"
max_messages_per_connection = 20
""")


def dest(source="ip1", domain="gmail.com", provider="google",
         hosts=("gmail-smtp-in.l.google.com",)) -> Destination:
    return Destination(source=source, site=",".join(hosts), domain=domain, provider=provider,
                       mx_hosts=hosts)


def test_provider_rule_beats_the_default() -> None:
    limits = resolve(POLICY.throttles, dest())
    assert limits.max_connections.value == 50
    assert limits.max_connections.key == ("ip1", "rule1", "provider:google")
    assert str(limits.max_rate.value) == "300/s"
    # Not set by the provider rule: falls through to the default rule.
    assert limits.max_messages_per_connection == 100


def test_domain_beats_provider_and_exact_source_beats_wildcard() -> None:
    limits = resolve(POLICY.throttles, dest(domain="example-gsuite.com"))
    assert str(limits.max_rate.value) == "10/s"
    assert limits.max_rate.key == ("ip1", "rule2", "domain:example-gsuite.com")
    assert resolve(POLICY.throttles, dest(source="ip2")).max_connections.value == 5


def test_budgets_are_shared_per_provider_but_not_per_default_site() -> None:
    a = resolve(POLICY.throttles, dest(hosts=("a.l.google.com",)))
    b = resolve(POLICY.throttles, dest(domain="other.com", hosts=("b.l.google.com",)))
    assert a.max_connections.key == b.max_connections.key
    x = resolve(POLICY.throttles, dest(domain="x.org", provider=None, hosts=("mx.x.org",)))
    y = resolve(POLICY.throttles, dest(domain="y.org", provider=None, hosts=("mx.y.org",)))
    assert x.max_connections.value == 20
    assert x.max_connections.key != y.max_connections.key
    assert x.max_rate is None


def test_mx_pattern_rule() -> None:
    limits = resolve(POLICY.throttles, dest(domain="contoso.com", provider=None,
                                            hosts=("contoso-com.mail.protection.outlook.com",)))
    assert limits.max_messages_per_connection == 20
    assert limits.max_connections.value == 20


def test_describe_lists_each_rule() -> None:
    lines = describe(POLICY.throttles)
    assert lines[1] == "[1] source *, provider google: max_connections=50, max_rate=300/s"


def test_connection_budget_counts_and_wakes_waiters() -> None:
    budget = ConnectionBudget(2)
    woken = []
    assert budget.try_acquire(2) and budget.try_acquire(2)
    assert not budget.try_acquire(2)
    budget.wait(lambda: woken.append(1))
    budget.release()
    assert woken == [1] and budget.peak == 2 and budget.open == 1


async def test_rate_limiter_paces_and_honours_share() -> None:
    limiter = RateLimiter(100.0)
    start = time.monotonic()
    for _ in range(22):
        await limiter.acquire()
    # 22 sends at 100/s: the first two may go at once (one interval of catch-up),
    # the other 20 are paced 10 ms apart.
    assert time.monotonic() - start >= 0.19
    half = RateLimiter(100.0)
    start = time.monotonic()
    await asyncio.gather(*(half.acquire(share=0.5) for _ in range(12)))
    assert time.monotonic() - start >= 0.19
