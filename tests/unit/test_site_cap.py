"""max_mx_connections: one cap per MX site over every source, resolved from throttle rules
(a default for sites no rule names), lowered for a while by a crowded server, and shared
by ready queues of different sources without starving either (with a fake connector)."""

from __future__ import annotations

import asyncio

import pytest
from test_ready_queue_reload import POLICY, ROUTE, FakeMx, _Connector, answered, until

from quiver.policy import PolicyError, Source, parse_policy
from quiver.scheduler import ready
from quiver.scheduler.budget import Budgets, ConnectionBudget
from quiver.scheduler.ready import Job, ReadyQueue
from quiver.scheduler.throttle import (
    DEFAULT_MAX_MX_CONNECTIONS,
    Destination,
    Limit,
    Limits,
    describe,
    resolve,
)

HEAD = """
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
"""


def dest(source: str = "ip1", domain: str = "small.example", provider: str | None = None,
         hosts: tuple[str, ...] = ("mx.small.example",)) -> Destination:
    return Destination(source=source, site=",".join(hosts), domain=domain, provider=provider,
                       mx_hosts=hosts)


def test_a_site_no_rule_names_gets_the_default_cap_over_all_sources() -> None:
    rules = parse_policy(HEAD + '[[throttles]]\nsource = "*"\nmax_connections = 20\n').throttles
    one, two = (resolve(rules, dest(source=s)).max_mx_connections for s in ("ip1", "ip2"))
    assert one == two == Limit(DEFAULT_MAX_MX_CONNECTIONS,
                               ("*", "default", "site:mx.small.example"))


def test_rules_set_the_cap_and_a_site_named_by_a_rule_has_none_unless_set() -> None:
    rules = parse_policy(HEAD + """
[[throttles]]            # 0: named sites only, per source
source = "ip2"
provider = "google"
max_connections = 50
[[throttles]]            # 1: every site: overrides the default
source = "*"
max_mx_connections = 30
[[throttles]]            # 2: one domain's site
source = "*"
domain = "tight.example"
max_mx_connections = 5
""").throttles
    assert resolve(rules, dest()).max_mx_connections == Limit(
        30, ("*", "rule1", "site:mx.small.example"))
    assert resolve(rules, dest(domain="tight.example")).max_mx_connections == Limit(
        5, ("*", "rule2", "site:mx.small.example"))
    gmail = dest(domain="gmail.com", provider="google", hosts=("a.l.google.com",))
    # The catch-all's 30 applies to google's site too (most specific rule that sets it).
    assert resolve(rules, gmail).max_mx_connections == Limit(
        30, ("*", "rule1", "site:a.l.google.com"))
    named_only = parse_policy(HEAD + """
[[throttles]]
source = "ip2"
provider = "google"
max_connections = 50
""").throttles
    # Named by a rule (even another source's): no default cap, whichever source asks.
    for source in ("ip1", "ip2"):
        assert resolve(named_only, dest(source, "gmail.com", "google",
                                        ("a.l.google.com",))).max_mx_connections is None
    assert "max_mx_connections=30" in describe(rules)[1]


@pytest.mark.parametrize(("rule", "problem"), [
    ('source = "ip1"\nmax_mx_connections = 5', r"throttles\[0\]\.max_mx_connections: counts"),
    ('source = "*"\nmax_mx_connections = 0', r"throttles\[0\]\.max_mx_connections: expected"),
    ('source = "*"\nmax_mx_connections = "5"', r"throttles\[0\]\.max_mx_connections: expected"),
])
def test_max_mx_connections_mistakes_are_named(rule: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(HEAD + f"[[throttles]]\n{rule}\n")


def test_a_lowered_budget_holds_until_its_time_then_lifts() -> None:
    budget = ConnectionBudget(20)
    assert budget.ceiling(20, now=-100.0) == 20
    budget.lower(5, until=10.0)
    assert budget.ceiling(20, now=9.9) == 5
    budget.lower(8, until=12.0)  # lowered again while lowered: never raised by it
    assert budget.ceiling(20, now=11.0) == 5
    assert budget.ceiling(3, now=11.0) == 3  # a share below the ceiling still binds
    budget.lower(0, until=13.0)
    assert budget.ceiling(20, now=12.5) == 1  # never below one connection
    assert budget.ceiling(20, now=13.0) == 20


class SourcedMx(FakeMx):
    """Records which source carried each message, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    async def open_session(self, source: Source, route, tls_mode: str = "opportunistic"):
        session, path = await super().open_session(source, route, tls_mode)
        send = session.send

        async def recorded(**kw):
            result = await send(**kw)
            self.order.append(source.name)
            return result

        session.send = recorded  # type: ignore[method-assign]
        return session, path


def capped(source: str, connections: int, site_cap: int) -> Limits:
    return Limits(max_connections=Limit(connections, (source, "rule0", "site:mx.d.test")),
                  max_messages_per_connection=5, max_rate=None,
                  max_mx_connections=Limit(site_cap, ("*", "rule0", "site:mx.d.test")))


async def test_two_sources_share_the_sites_cap_in_turns_without_starving() -> None:
    mx, budgets = SourcedMx(), Budgets()
    queues = {
        name: ReadyQueue(
            source=Source(name=name, ip=ip, ehlo=f"{name}.test", az="az1"), route=ROUTE,
            limits=capped(name, 2, 2), budgets=budgets, connector=_Connector(mx),  # type: ignore[arg-type]
            policy=POLICY, destination=Destination(source=name, site=ROUTE.site,
                                                 domain="d.test", provider=None,
                                                 mx_hosts=("mx.d.test",)))
        for name, ip in (("a", "192.0.2.1"), ("b", "192.0.2.2"))}
    loop = asyncio.get_running_loop()
    jobs: dict[str, list[Job]] = {}
    for name, queue in queues.items():
        jobs[name] = [Job(sender="s@x.test", recipients=[f"{name}{i}@d.test"], message=b"m",
                          future=loop.create_future()) for i in range(60)]
        for job in jobs[name]:
            queue.submit(job)
    site = queues["a"].site_budget
    assert site is queues["b"].site_budget  # one budget for the site, whatever the source
    for name in queues:
        assert await answered(jobs[name]) == [250] * 60
    await until(lambda: site.open == 0 or all(q.idle == q.active for q in queues.values()))
    assert site.peak == 2
    # Source a took the site first; b had its turn long before a was done.
    first_b = mx.order.index("b")
    assert mx.order[:first_b].count("a") < 30, mx.order[:first_b]
    for queue in queues.values():
        await queue.close()


async def test_an_idle_connection_makes_room_at_once_for_another_sources_mail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The site's only connection is b's, idle: a's mail does not wait for its idle
    timeout (made an hour here, so waiting for it would fail the test)."""
    monkeypatch.setattr(ready, "IDLE_TIMEOUT", 3600.0)
    mx, budgets = SourcedMx(), Budgets()
    a, b = (ReadyQueue(
        source=Source(name=name, ip=ip, ehlo=f"{name}.test", az="az1"), route=ROUTE,
        limits=capped(name, 1, 1), budgets=budgets, connector=_Connector(mx),  # type: ignore[arg-type]
        policy=POLICY, destination=Destination(source=name, site=ROUTE.site, domain="d.test",
                                             provider=None, mx_hosts=("mx.d.test",)))
        for name, ip in (("a", "192.0.2.1"), ("b", "192.0.2.2")))
    loop = asyncio.get_running_loop()

    def job(rcpt: str) -> Job:
        return Job(sender="s@x.test", recipients=[rcpt], message=b"m",
                   future=loop.create_future())

    first = job("b1@d.test")
    b.submit(first)
    assert await answered([first]) == [250]
    assert b.idle == 1 and b.site_budget.open == 1  # b's connection stays, idle
    second = job("a1@d.test")
    a.submit(second)
    assert await answered([second]) == [250]
    assert mx.order == ["b", "a"] and mx.closed >= 1
    for queue in (a, b):
        await queue.close()
