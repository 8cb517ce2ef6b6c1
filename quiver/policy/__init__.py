"""Policy: pools, egress sources, providers, throttles, retry schedule, DKIM keys, routes."""

from quiver.policy.load import PolicyError, build_policy, load_policy, parse_policy
from quiver.policy.model import (
    Content,
    Delivery,
    DkimKey,
    Intake,
    Policy,
    Pool,
    ProxyNode,
    ProxyTier,
    Retry,
    Source,
    Throttle,
    TlsMode,
    TlsPolicy,
    TlsRule,
)

__all__ = [
    "Content", "Delivery", "DkimKey", "Intake", "Policy", "PolicyError", "Pool", "ProxyNode",
    "ProxyTier", "Retry", "Source", "Throttle", "TlsMode", "TlsPolicy", "TlsRule",
    "build_policy", "load_policy", "parse_policy",
]
