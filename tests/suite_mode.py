"""Whether this run must prove everything (CI) or may skip what the host lacks (a laptop).

CI sets QUIVER_REQUIRE_ALL=1 (`.ci/run`); a bare CI=true counts too, as most CI
services set it. Then a test that cannot run here fails instead of skipping,
unless its skip reason is in ALLOWED_SKIPS below, and the local stack must use
HAProxy rather than quietly sending directly. QUIVER_REQUIRE_ALL=0 turns it off.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

REQUIRE_ALL_ENV = "QUIVER_REQUIRE_ALL"
_TRUE = ("1", "true", "yes", "on")

# The only skips a CI run may contain, each with why it is fair. A pattern must match
# the whole skip reason. Anything else that skips in CI is a missing tool or a test
# that proves less than its name says: install the tool (scripts/setup.sh) or fix it.
ALLOWED_SKIPS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Containers often run with IPv6 disabled (no ::1). The family rule it checks is
    # also covered for IPv4 sources; an IPv6 source needs an IPv6 address to bind.
    (re.compile(r"no IPv6 loopback on this host"),
     "IPv6 is disabled in some CI containers"),
)


def require_all(environ: Mapping[str, str] | None = None) -> bool:
    """True when every test must run (CI): QUIVER_REQUIRE_ALL, else CI=true."""
    env = os.environ if environ is None else environ
    explicit = env.get(REQUIRE_ALL_ENV)
    if explicit is not None and explicit.strip():
        return explicit.strip().lower() in _TRUE
    return env.get("CI", "").strip().lower() in _TRUE


def allowed_skip(reason: str) -> bool:
    return any(pattern.fullmatch(reason) for pattern, _ in ALLOWED_SKIPS)
