"""Throttle resolution: which policy rule sets each limit for one destination.

Pure functions over policy data. For traffic from source `s` to a destination
(provider `p`, domain `d`, MX hosts `H`), a rule applies when its source matches
`s` and its scope matches: `any` always, `provider` when its pattern matches `p`,
`domain` when it matches `d`, `mx` when it matches a host in `H`. Each limit
(max_connections, max_messages_per_connection, max_rate) is taken from the most
specific applicable rule that sets it:

1. an exact source name beats a source pattern, which beats "*";
2. scope mx beats domain beats provider beats any;
3. a literal pattern beats a wildcard, a longer pattern beats a shorter one;
4. earlier in the file wins.

A limit is shared by all traffic from `s` that the same rule matches with the
same value: a provider rule is one budget per (source, provider) across every
site of that provider; a domain rule one per (source, domain); mx and any rules
one per (source, site).

`max_mx_connections` is different: it caps the connections to one site from every
source together (receivers count connections per client host, and a pool's sources
often share one), so it is one budget per site whatever the rule's scope. A site
that no provider, domain or mx rule names gets DEFAULT_MAX_MX_CONNECTIONS unless a
catch-all rule sets another value; a site that such a rule names has no cap unless
a rule that applies to it sets one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quiver.policy import Throttle
from quiver.routing.providers import pattern_matches
from quiver.units import Rate

_SCOPE_RANK = {"any": 0, "provider": 1, "domain": 2, "mx": 3}
# Exim's default smtp_accept_max and Postfix's default per-client connection limit
# (smtpd_client_connection_count_limit = 50, but many sites lower it) sit at or above
# this: a site nobody described is not opened wider than its likeliest limit.
DEFAULT_MAX_MX_CONNECTIONS = 20


@dataclass(frozen=True, slots=True)
class Destination:
    source: str
    site: str
    domain: str
    provider: str | None
    mx_hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit and the key of the budget it draws from (shared across ready queues)."""

    value: int | Rate
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: Limit | None
    max_messages_per_connection: int | None
    max_rate: Limit | None
    # Every source's connections to the site together; its key has no source.
    max_mx_connections: Limit | None = None


def _source_rank(pattern: str, source: str) -> int:
    if pattern == source:
        return 2
    return 0 if pattern == "*" else 1


def scope_applies(scope: str, pattern: str, dest: Destination) -> str | None:
    """What a rule's scope matched in `dest` (its budget key), or None. Whatever the
    rule limits: throttles and TLS modes are matched the same way."""
    if scope == "any":
        return f"site:{dest.site}"
    if scope == "provider":
        if dest.provider is not None and pattern_matches(pattern, dest.provider):
            return f"provider:{dest.provider}"
        return None
    if scope == "domain":
        return f"domain:{dest.domain}" if pattern_matches(pattern, dest.domain) else None
    if any(pattern_matches(pattern, h) for h in dest.mx_hosts):
        return f"site:{dest.site}"
    return None


def scope_specificity(scope: str, pattern: str, index: int) -> tuple[int, int, int, int]:
    """Rules 2-4 above, as a sort key (higher is more specific)."""
    literal = 0 if "*" in pattern else 1
    return (_SCOPE_RANK[scope], literal, len(pattern), -index)


def _applies(rule: Throttle, dest: Destination) -> str | None:
    """The value the rule matched (its budget key), or None if it does not apply."""
    if not pattern_matches(rule.source, dest.source):
        return None
    return scope_applies(rule.scope, rule.pattern, dest)


def _specificity(rule: Throttle, source: str) -> tuple[int, int, int, int, int]:
    return (_source_rank(rule.source, source),
            *scope_specificity(rule.scope, rule.pattern, rule.index))


def _mx_connections(rules: Sequence[Throttle], dest: Destination) -> Limit | None:
    """The cap on every source's connections to the site together (see above)."""
    best: tuple[tuple[int, int, int, int], Throttle] | None = None
    named = False
    for rule in rules:
        if scope_applies(rule.scope, rule.pattern, dest) is None:
            continue
        named = named or rule.scope != "any"
        if rule.max_mx_connections is not None:
            rank = scope_specificity(rule.scope, rule.pattern, rule.index)
            if best is None or rank > best[0]:
                best = (rank, rule)
    site = f"site:{dest.site}"
    if best is not None:
        return Limit(best[1].max_mx_connections or 0, ("*", f"rule{best[1].index}", site))
    return None if named else Limit(DEFAULT_MAX_MX_CONNECTIONS, ("*", "default", site))


def resolve(rules: Sequence[Throttle], dest: Destination) -> Limits:
    matched: list[tuple[tuple[int, int, int, int, int], Throttle, str]] = []
    for rule in rules:
        value = _applies(rule, dest)
        if value is not None:
            matched.append((_specificity(rule, dest.source), rule, value))
    matched.sort(key=lambda m: m[0], reverse=True)

    def first(attr: str) -> tuple[Throttle, str] | None:
        for _, rule, value in matched:
            if getattr(rule, attr) is not None:
                return rule, value
        return None

    conn = first("max_connections")
    per_conn = first("max_messages_per_connection")
    rate = first("max_rate")
    return Limits(
        max_connections=None if conn is None else Limit(
            conn[0].max_connections or 0, (dest.source, f"rule{conn[0].index}", conn[1])),
        max_messages_per_connection=None if per_conn is None
        else per_conn[0].max_messages_per_connection,
        max_rate=None if rate is None else Limit(
            rate[0].max_rate or Rate(1, 1), (dest.source, f"rule{rate[0].index}", rate[1])),
        max_mx_connections=_mx_connections(rules, dest),
    )


def describe(rules: Iterable[Throttle]) -> list[str]:
    """One line per rule, for `quiver config check` and logs."""
    out = []
    for r in rules:
        scope = "any destination" if r.scope == "any" else f"{r.scope} {r.pattern}"
        parts = [f"{k}={v}" for k, v in (
            ("max_connections", r.max_connections),
            ("max_messages_per_connection", r.max_messages_per_connection),
            ("max_rate", r.max_rate),
            ("max_mx_connections", r.max_mx_connections)) if v is not None]
        out.append(f"[{r.index}] source {r.source}, {scope}: {', '.join(parts)}")
    return out
