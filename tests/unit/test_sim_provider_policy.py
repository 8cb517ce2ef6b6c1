"""The simulated provider's policy fragment, merged over the local stack's policy as
the stack merges it: it validates, routes the provider's MX to `sim`, limits the one
source to 5R, and turns adaptation on (with the 421 4.7.28 rule) or off."""

from __future__ import annotations

import pytest

from quiver.devstack.policy_fragment import merged_policy_text
from quiver.devstack.sim_provider import (
    MX_HOST,
    PROVIDER,
    RECORDS,
    SOURCE,
    policy_fragment,
)
from quiver.devstack.stack import ProxyPorts, local_policy_text
from quiver.policy import parse_policy
from quiver.routing.providers import ProviderMatcher
from quiver.scheduler.throttle import Destination, resolve


def merged(*, adaptive: bool, proxy: ProxyPorts | None = None):  # type: ignore[no-untyped-def]
    base = local_policy_text(mx_port=2525, ca_file="ca.crt", max_age="30m", proxy=proxy)
    text = merged_policy_text(base, policy_fragment(hidden_rate=20, adaptive=adaptive),
                              origin="the simulated provider's policy")
    return parse_policy(text, origin="sim")


@pytest.mark.parametrize("proxy", [None, ProxyPorts(frontend=2500, health=8500,
                                                    allowed=(2525,))])
def test_the_provider_and_its_static_limit_of_five_times_r(proxy: ProxyPorts | None) -> None:
    policy = merged(adaptive=True, proxy=proxy)
    assert ProviderMatcher(policy.providers).match([MX_HOST]) == PROVIDER
    dest = Destination(source=SOURCE, site=MX_HOST, domain="sim-provider.test",
                       provider=PROVIDER, mx_hosts=(MX_HOST,))
    limits = resolve(policy.throttles, dest)
    assert limits.max_rate is not None
    assert limits.max_rate.value.per_second == 100.0
    # The other sources keep the generated catch-all only: no rate limit.
    other = resolve(policy.throttles, Destination(
        source="local1", site=MX_HOST, domain="sim-provider.test", provider=PROVIDER,
        mx_hosts=(MX_HOST,)))
    assert other.max_rate is None
    assert policy.pools["bulk"].sources == ((SOURCE, 1),)


def test_adaptive_on_has_the_rate_limit_rule_for_sim() -> None:
    adaptive = merged(adaptive=True).adaptive
    assert adaptive.enabled
    [rule] = [r for r in adaptive.rules_for(PROVIDER) if r.name == "sim-rate-limited"]
    assert rule.action == "reduce"
    assert rule.matches(421, "4.7.28", "Our system has detected an unusual rate")
    assert not rule.matches(421, "4.7.0", "too busy")


def test_adaptive_off_is_disabled() -> None:
    assert merged(adaptive=False).adaptive.enabled is False


def test_the_records_point_the_domain_at_the_mx_address() -> None:
    assert [(r.name, r.type, r.value) for r in RECORDS] == [
        ("sim-provider.test", "MX", MX_HOST), (MX_HOST, "A", "127.0.0.30")]
