"""A simulated mailbox provider on the local stack: `sim-provider.test`, whose MX takes
at most a hidden rate of messages per second from each sending IP and answers Gmail's
`421 4.7.28` past it (`servers/throttled_mx`).

The stack learns of it through its extra DNS records (the domain's MX and the MX's
address, 127.0.0.30) and a policy fragment: provider `sim` for the MX, a static
`max_rate` of five times the hidden rate for the one source that sends to it (pool
`bulk`, source local3), and an adaptive rule for `sim` that reduces that source's
rate on a 421 4.7.28. The hidden rate is known to this module and to the MX only;
the sender sees replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quiver.devstack.servers.dns_records import ExtraRecord
from quiver.devstack.servers.throttled_mx import ThrottledMx, start_throttled_mx
from quiver.devstack.servers.tls import issue_cert
from quiver.devstack.stack import LocalStack

DOMAIN = "sim-provider.test"
MX_HOST = f"mx.{DOMAIN}"
# Its own loopback address: the stack's other MX listens on 127.0.0.1 at the port the
# policy's [delivery] names for every MX, so this one listens on that port too.
MX_IP = "127.0.0.30"
PROVIDER = "sim"
# Mail to the provider leaves from one source, as the per-IP limit is about one IP.
POOL = "bulk"
SOURCE = "local3"
# The static limit sits this far above the hidden rate: what an operator might guess
# for a provider that publishes nothing.
STATIC_FACTOR = 5

RECORDS = (
    ExtraRecord(index=0, name=DOMAIN, type="MX", value=MX_HOST, preference=10),
    ExtraRecord(index=1, name=MX_HOST, type="A", value=MX_IP),
)


def _rate(value: float) -> str:
    return f"{value:g}/s"


# How the sender adapts here. Compressed like the local stack's retry schedule: in
# production a quiet window is a minute and a step 1/s, and finding a rate takes
# that many minutes; here it takes seconds, so a test can watch it. The reduce
# factor is gentle (0.85, not the default 0.7): after each cut the rate stays within
# 20 % of the limit it just touched, instead of dropping a third below it.
ADAPTIVE_SETTINGS: dict[str, Any] = {"floor": "1/s", "step": "2/s", "quiet": "2s"}
REDUCE_FACTOR = 0.85
# A rule window is also the least time between two cuts: the refusals of one
# overshoot arrive together and count once.
RULE_WINDOW = "2s"
# No site backoff is set here: a 421 that the reduce rule answers by cutting the rate
# does not back the source off that MX (scheduler/ready.py), so the stack's own
# `site_backoff` only applies with adaptation off.


def policy_fragment(*, hidden_rate: float, adaptive: bool,
                    adaptive_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merged over the local stack's policy (see policy_fragment): provider `sim`, its
    static limit for SOURCE, and adaptation on (with a rule for `sim`) or off."""
    return {
        "providers": {PROVIDER: [MX_HOST]},
        # A fragment's [[throttles]] replaces the generated list, so it restates the
        # generated catch-all beside the provider's limit.
        "throttles": [
            {"source": "*", "max_connections": 20},
            {"source": SOURCE, "provider": PROVIDER,
             "max_rate": _rate(STATIC_FACTOR * hidden_rate)},
        ],
        "adaptive": (adaptive_fragment(adaptive_settings) if adaptive
                     else {"enabled": False}),
    }


def adaptive_fragment(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The `[adaptive]` table with the rule for `sim` (and any `settings` over it)."""
    rule = {
        "name": "sim-rate-limited",
        "provider": PROVIDER,
        "code": 421,
        "enhanced": "4.7.28",
        "window": RULE_WINDOW,
        "action": "reduce",
        "factor": REDUCE_FACTOR,
    }
    return {"enabled": True, **ADAPTIVE_SETTINGS, **(settings or {}), "rules": [rule]}


def start_sim_mx(stack: LocalStack, *, hidden_rate: float) -> ThrottledMx:
    """The provider's MX for a started `stack`: on MX_IP at the stack's MX port, with a
    certificate from the stack's CA for MX_HOST (the sender verifies it)."""
    assert stack.mx is not None, "start the stack first"
    cert, key = issue_cert(ca_dir=stack.root / "ca", hostnames=[MX_HOST],
                           dir=stack.root / "sim-tls")
    store = stack.root / "sim-mx"
    return start_throttled_mx(rate=hidden_rate, store_dir=store, host=MX_IP,
                              port=stack.mx.address[1], hostname=MX_HOST,
                              tls_cert=cert, tls_key=key)


def sim_stack(root: Path, *, hidden_rate: float, adaptive: bool,
              adaptive_settings: dict[str, Any] | None = None,
              haproxy: bool | None = None) -> LocalStack:
    """A local stack (not started) that knows the provider. Mail is kept for half an
    hour: a run defers plenty, and none of it may expire while it does. `haproxy` as
    LocalStack's (None: egress through HAProxy when it is installed)."""
    return LocalStack(
        root, max_age="30m", haproxy=haproxy, dns_records=RECORDS,
        dns_origin="the simulated provider's records",
        policy_fragment=policy_fragment(hidden_rate=hidden_rate, adaptive=adaptive,
                                        adaptive_settings=adaptive_settings),
        fragment_origin="the simulated provider's policy",
    )
