"""Load and validate a policy TOML file into a typed `Policy`.

Every problem is collected with its path (`pools.bulk.sources.ip9: unknown source`)
so an operator fixes a broken file in one pass. Loading never half-succeeds.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from quiver.policy.adaptive import adaptive_section
from quiver.policy.controls import parse_controls
from quiver.policy.data import parse_data
from quiver.policy.feedback import feedback_section
from quiver.policy.guards import parse_guards
from quiver.policy.model import (
    SQS_MAX_RETENTION_S,
    TLS_MODES,
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
from quiver.policy.return_path import parse_return_path
from quiver.policy.suppression import parse_suppression
from quiver.policy.tenants import parse_tenants
from quiver.policy.unsubscribe import parse_unsubscribe
from quiver.policy.warmup import parse_warmup
from quiver.routing.safety import IPNetwork, forbidden_overlaps
from quiver.units import parse_duration, parse_rate, parse_size

T = TypeVar("T")
# More signing workers than this (processes or threads) only contend for cores a task
# does not have (and threads for the GIL too).
MAX_THREADS = 16

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_PATTERN = re.compile(r"^(\*|\*\.)?[A-Za-z0-9_.-]*\*?$")
_DEFAULT_DKIM_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to",
    "mime-version", "content-type", "content-transfer-encoding", "list-unsubscribe",
    "list-unsubscribe-post", "feedback-id",
)
# What quiver.dkim.keyring.MAX_KEYS_PER_DOMAIN allows (RSA + ed25519 + one rotating in).
_MAX_DKIM_KEYS_PER_DOMAIN = 3
_TOP_KEYS = {
    "version", "default_pool", "proxy", "sources", "pools", "providers", "throttles", "dkim",
    "retry", "delivery", "intake", "content", "tls", "feedback",
    "local_only", "return_path", "suppression", "unsubscribe", "controls", "data", "warmup",
    "guards",
    "adaptive", "tenants",
}
# A message is held in memory while it is delivered, and providers refuse far less.
MAX_MESSAGE_SIZE = 100 * 1024**2
MIN_MESSAGE_SIZE = 1024


class PolicyError(ValueError):
    """A policy that cannot be used; `problems` lists every `path: reason`."""

    def __init__(self, problems: list[str], origin: str = "policy") -> None:
        self.problems = problems
        super().__init__(f"{origin}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def table(self, data: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.error(_join(path, key), f"expected a table, got {type(value).__name__}")
            return {}
        return value

    def keys(self, data: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in data:
            if key not in allowed:
                self.error(
                    _join(path, key), "unknown key (allowed: " + ", ".join(sorted(allowed)) + ")"
                )

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], T],
        default: T,
    ) -> T:
        if key not in data:
            return default
        try:
            return convert(data[key])
        except (ValueError, TypeError) as exc:
            self.error(_join(path, key), str(exc))
            return default


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value):
        raise ValueError(f"expected a hostname, got {value!r}")
    return value.rstrip(".").lower()


def _ip(value: Any) -> str:
    # ipaddress takes integers too: `ip = 7` would quietly become 0.0.0.7.
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"expected a port 1-65535, got {value!r}")
    return value


def _networks(c: _Checker, t: dict[str, Any], path: str) -> tuple[str, ...]:
    nets = t.get("allow_networks", [])
    if not isinstance(nets, list):
        c.error(f"{path}.allow_networks", "expected a list of networks")
        return ()
    networks: list[str] = []
    for i, net in enumerate(nets):
        try:
            networks.append(_network(net))
        except ValueError as exc:
            c.error(f"{path}.allow_networks[{i}]", str(exc))
    return tuple(networks)


def _network(value: Any) -> str:
    if not isinstance(value, str):  # an integer would quietly become a /32
        raise ValueError(f"expected a network like '127.0.0.0/8', got {value!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except (ValueError, TypeError):
        raise ValueError(f"expected a network like '127.0.0.0/8', got {value!r}") from None


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"expected a number in [0, 1), got {value!r}")
    return float(value)


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise ValueError(f"expected a number >= 1, got {value!r}")
    return float(value)


def _pattern(value: Any) -> str:
    """A DNS name pattern (domain, MX host): DNS names are case-insensitive."""
    return _name_pattern(value).lower()


def _name_pattern(value: Any) -> str:
    """A pattern over names the policy defines (sources, providers): their case is kept,
    as names are matched case-sensitively (a throttle for source "Tx1" is for "Tx1")."""
    if not isinstance(value, str) or not value or not _PATTERN.match(value):
        raise ValueError(f"expected a name or wildcard pattern like '*.google.com', got {value!r}")
    return value


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError:
        raise PolicyError(["not UTF-8 text"], str(path)) from None
    return parse_policy(text, origin=str(path))


def parse_policy(text: str, *, origin: str = "policy") -> Policy:
    """Validate policy TOML text; raises PolicyError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"not valid TOML: {exc}"], origin) from None
    return build_policy(data, origin=origin)


def build_policy(data: Mapping[str, Any], *, origin: str = "policy") -> Policy:
    c = _Checker()
    c.keys(data, _TOP_KEYS, "")
    version = data.get("version", 1)
    if version != 1:
        c.error("version", f"unsupported policy version {version!r} (this build reads 1)")

    proxy = _proxy(c, c.table(data, "proxy", ""))
    sources = _sources(c, c.table(data, "sources", ""), proxy.nodes)
    pools = _pools(c, c.table(data, "pools", ""), sources)
    default_pool = data.get("default_pool")
    if not isinstance(default_pool, str):
        c.error("default_pool", "required: the pool used when a message names none")
        default_pool = ""
    elif default_pool not in pools:
        c.error("default_pool", f"unknown pool {default_pool!r}")
    providers = _providers(c, c.table(data, "providers", ""))
    throttles = _throttles(c, data.get("throttles", []), sources, providers)
    dkim = _dkim(c, data.get("dkim", []))
    retry = _retry(c, c.table(data, "retry", ""))
    delivery = _delivery(c, c.table(data, "delivery", ""))
    intake = _intake(c, c.table(data, "intake", ""))
    tls = _tls(c, c.table(data, "tls", ""), providers, verify_tls=delivery.verify_tls)
    content = _content(c, c.table(data, "content", ""))
    suppression = parse_suppression(c.table(data, "suppression", ""), error=c.error)
    controls = parse_controls(c.table(data, "controls", ""), error=c.error)
    data_policy = parse_data(c.table(data, "data", ""), error=c.error)
    warmup = parse_warmup(c.table(data, "warmup", ""), c.table(data, "sources", ""),
                          providers=providers, error=c.error)
    guards = parse_guards(c.table(data, "guards", ""), error=c.error)
    tenants = parse_tenants(c.table(data, "tenants", ""), error=c.error)
    local_only = _local_only(c, data)
    return_path, problems = parse_return_path(data.get("return_path"))
    c.problems.extend(f"{path}: {message}" for path, message in problems)
    feedback, feedback_problems = feedback_section(data.get("feedback"))
    c.problems.extend(feedback_problems)
    unsubscribe, unsubscribe_problems = parse_unsubscribe(
        data.get("unsubscribe"), return_path=return_path, dkim=dkim, local_only=local_only,
        feedback_addresses=feedback.addresses)
    c.problems.extend(unsubscribe_problems)
    adaptive, adaptive_problems = adaptive_section(data.get("adaptive"), providers=providers)
    c.problems.extend(adaptive_problems)

    if c.problems:
        raise PolicyError(c.problems, origin)
    return Policy(
        default_pool=default_pool,
        sources=sources,
        pools=pools,
        proxy=proxy,
        providers=providers,
        throttles=throttles,
        dkim=dkim,
        retry=retry,
        delivery=delivery,
        intake=intake,
        content=content,
        suppression=suppression,
        controls=controls,
        warnings=tuple(c.warnings),
        tls=tls,
        local_only=local_only,
        return_path=return_path,
        feedback=feedback,
        unsubscribe=unsubscribe,
        data=data_policy,
        warmup=warmup,
        guards=guards,
        adaptive=adaptive,
        tenants=tenants,
    )


def _proxy(c: _Checker, t: dict[str, Any]) -> ProxyTier:
    c.keys(
        t,
        {"nodes", "protocol", "frontend_port", "health_port", "allowed_ports", "allow_networks"},
        "proxy",
    )
    d = ProxyTier()
    nodes: dict[str, ProxyNode] = {}
    for name, raw in c.table(t, "nodes", "proxy").items():
        path = f"proxy.nodes.{name}"
        if not _NAME.match(name):
            c.error(path, "name must be 1-63 of [A-Za-z0-9_.-]")
        if not isinstance(raw, dict):
            c.error(path, "expected a table")
            continue
        c.keys(raw, {"az", "address"}, path)
        if "address" not in raw:
            c.error(f"{path}.address", "required: the node's primary address (health, stats)")
        az = raw.get("az")
        if not isinstance(az, str) or not az:
            c.error(f"{path}.az", "required: the node's availability zone")
            az = "?"
        nodes[name] = ProxyNode(name=name, az=az, address=c.get(raw, "address", path, _ip, ""))
    protocol = t.get("protocol", d.protocol)
    if protocol not in (1, 2) or isinstance(protocol, bool):
        c.error("proxy.protocol", f"expected 1 or 2, got {protocol!r}")
        protocol = 2
    ports = t.get("allowed_ports", list(d.allowed_ports))
    if not isinstance(ports, list) or not ports or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
    ):
        c.error("proxy.allowed_ports", "expected a non-empty list of ports")
        ports = list(d.allowed_ports)
    return ProxyTier(
        nodes=nodes,
        protocol=1 if protocol == 1 else 2,
        frontend_port=c.get(t, "frontend_port", "proxy", _port, d.frontend_port),
        health_port=c.get(t, "health_port", "proxy", _port, d.health_port),
        allowed_ports=tuple(ports),
        allow_networks=_networks(c, t, "proxy"),
    )


def _sources(
    c: _Checker, table: dict[str, Any], nodes: dict[str, ProxyNode]
) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    seen_ips: dict[str, str] = {}
    seen_local: dict[str, str] = {}
    if not table:
        c.error("sources", "define at least one egress source")
    for name, raw in table.items():
        path = f"sources.{name}"
        if not _NAME.match(name):
            c.error(path, "name must be 1-63 of [A-Za-z0-9_.-]")
        if not isinstance(raw, dict):
            c.error(path, "expected a table")
            continue
        # `warmup` is read by the [warmup] section (quiver/policy/warmup.py).
        c.keys(raw, {"ip", "ehlo", "az", "node", "local_ip", "warmup"}, path)
        if "ip" not in raw:
            c.error(f"{path}.ip", "required: the public IP receiving MXes see")
        ip = c.get(raw, "ip", path, _ip, "0.0.0.0")
        if ip in seen_ips:
            c.error(f"{path}.ip", f"{ip} is already used by source {seen_ips[ip]!r}")
        seen_ips.setdefault(ip, name)
        if "ehlo" not in raw:
            c.error(f"{path}.ehlo", "required: the EHLO name, matching the IP's PTR record")
        ehlo = c.get(raw, "ehlo", path, _hostname, "localhost")
        local_ip = c.get(raw, "local_ip", path, _ip, None)
        node = raw.get("node")
        az = raw.get("az")
        if node is not None:
            if node not in nodes:
                c.error(f"{path}.node", f"unknown proxy node {node!r}")
            else:
                if az is not None and az != nodes[node].az:
                    c.error(f"{path}.az", f"differs from its node's AZ {nodes[node].az!r}")
                az = nodes[node].az
            if local_ip is None:
                c.error(f"{path}.local_ip", "required with node: the address it leaves from")
        if local_ip is not None:
            if local_ip in seen_local:
                other = seen_local[local_ip]
                c.error(f"{path}.local_ip", f"{local_ip} is already used by {other!r}")
            seen_local.setdefault(local_ip, name)
        if not isinstance(az, str) or not az:
            az = "local"
        sources[name] = Source(
            name=name, ip=ip, ehlo=ehlo, az=az, local_ip=local_ip,
            node=node if isinstance(node, str) else None,
        )
    return sources


def _pools(c: _Checker, table: dict[str, Any], sources: dict[str, Source]) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    if not table:
        c.error("pools", "define at least one pool")
    for name, raw in table.items():
        path = f"pools.{name}"
        if not _NAME.match(name):
            c.error(path, "name must be 1-63 of [A-Za-z0-9_.-]")
        if not isinstance(raw, dict):
            c.error(path, "expected a table")
            continue
        c.keys(raw, {"sources"}, path)
        members = raw.get("sources")
        entries: list[tuple[str, int]] = []
        if isinstance(members, list):
            members = {m: 1 for m in members if isinstance(m, str)}
        if not isinstance(members, dict) or not members:
            c.error(f"{path}.sources", "expected a non-empty list or {source = weight} table")
            continue
        for source, weight in members.items():
            spath = f"{path}.sources.{source}"
            if source not in sources:
                c.error(spath, "unknown source")
                continue
            try:
                entries.append((source, _positive_int(weight)))
            except ValueError as exc:
                c.error(spath, f"weight: {exc}")
        azs = {sources[s].az for s, _ in entries}
        if len(entries) > 1 and len(azs) == 1:
            c.warnings.append(
                f"{path}: all sources are in AZ {next(iter(azs))!r}; losing it stops the pool"
            )
        pools[name] = Pool(name=name, sources=tuple(entries))
    return pools


def _providers(c: _Checker, table: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    providers: dict[str, tuple[str, ...]] = {}
    for name, patterns in table.items():
        path = f"providers.{name}"
        if not isinstance(patterns, list) or not patterns:
            c.error(path, "expected a non-empty list of MX host patterns")
            continue
        good: list[str] = []
        for i, pattern in enumerate(patterns):
            try:
                good.append(_pattern(pattern))
            except ValueError as exc:
                c.error(f"{path}[{i}]", str(exc))
        providers[name] = tuple(good)
    return providers


def _throttles(
    c: _Checker,
    raw: Any,
    sources: dict[str, Source],
    providers: dict[str, tuple[str, ...]],
) -> tuple[Throttle, ...]:
    if not isinstance(raw, list):
        c.error("throttles", "expected an array of tables ([[throttles]])")
        return ()
    out: list[Throttle] = []
    for i, item in enumerate(raw):
        path = f"throttles[{i}]"
        if not isinstance(item, dict):
            c.error(path, "expected a table")
            continue
        c.keys(
            item,
            {"source", "provider", "domain", "mx", "max_connections",
             "max_messages_per_connection", "max_rate", "max_mx_connections"},
            path,
        )
        source = c.get(item, "source", path, _name_pattern, "*")
        if "*" not in source and source not in sources:
            c.error(f"{path}.source", f"unknown source {source!r}")
        scopes = [k for k in ("provider", "domain", "mx") if k in item]
        if len(scopes) > 1:
            c.error(path, "name at most one of provider, domain, mx")
        scope = scopes[0] if scopes else "any"
        convert = _name_pattern if scope == "provider" else _pattern
        pattern = c.get(item, scope, path, convert, "*") if scope != "any" else "*"
        if scope == "provider" and pattern not in providers and "*" not in pattern:
            c.error(f"{path}.provider", f"unknown provider {pattern!r}")
        throttle = Throttle(
            source=source,
            scope=scope,  # type: ignore[arg-type]
            pattern=pattern,
            max_connections=c.get(item, "max_connections", path, _positive_int, None),
            max_messages_per_connection=c.get(
                item, "max_messages_per_connection", path, _positive_int, None
            ),
            max_rate=c.get(item, "max_rate", path, parse_rate, None),
            index=i,
            max_mx_connections=c.get(item, "max_mx_connections", path, _positive_int, None),
        )
        if (throttle.max_connections, throttle.max_messages_per_connection,
                throttle.max_rate, throttle.max_mx_connections) == (None, None, None, None):
            c.error(path, "sets no limit (max_connections, max_messages_per_connection, "
                          "max_rate, max_mx_connections)")
        if throttle.max_mx_connections is not None and source != "*":
            c.error(f"{path}.max_mx_connections",
                    'counts the connections of every source: only in a rule with source = "*"')
        out.append(throttle)
    return tuple(out)


def _dkim(c: _Checker, raw: Any) -> tuple[DkimKey, ...]:
    if not isinstance(raw, list):
        c.error("dkim", "expected an array of tables ([[dkim]])")
        return ()
    keys: list[DkimKey] = []
    seen: dict[str, list[tuple[str, str]]] = {}  # domain -> (selector, algorithm)
    for i, item in enumerate(raw):
        path = f"dkim[{i}]"
        if not isinstance(item, dict):
            c.error(path, "expected a table")
            continue
        c.keys(item, {"domain", "selector", "algorithm", "key_file", "key_secret", "headers"}, path)
        domain = c.get(item, "domain", path, _hostname, "")
        selector = c.get(item, "selector", path, _hostname, "")
        if not domain:
            c.error(f"{path}.domain", "required")
        if not selector:
            c.error(f"{path}.selector", "required")
        algorithm = item.get("algorithm", "rsa-sha256")
        if algorithm not in ("rsa-sha256", "ed25519-sha256"):
            c.error(f"{path}.algorithm", f"expected rsa-sha256 or ed25519-sha256: {algorithm!r}")
            algorithm = "rsa-sha256"
        # Several keys per domain sign side by side (RSA + ed25519, or an old and a new
        # selector while rotating); each is a signature per message, so a few at most.
        present = seen.setdefault(domain, [])
        if domain and any(selector == s for s, _ in present):
            c.error(f"{path}.selector", f"{domain} has a key with selector {selector} already")
        elif domain and len(present) >= _MAX_DKIM_KEYS_PER_DOMAIN:
            c.error(f"{path}.domain", f"{domain} has {len(present)} keys already; at most "
                    f"{_MAX_DKIM_KEYS_PER_DOMAIN} sign side by side")
        present.append((selector, algorithm))
        key_file, key_secret = item.get("key_file"), item.get("key_secret")
        if (key_file is None) == (key_secret is None):
            c.error(path, "set exactly one of key_file (a PEM path) or key_secret (a secret id)")
        headers = item.get("headers", list(_DEFAULT_DKIM_HEADERS))
        if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
            c.error(f"{path}.headers", "expected a list of header names")
            headers = list(_DEFAULT_DKIM_HEADERS)
        lowered = tuple(h.lower() for h in headers)
        if "from" not in lowered:
            c.error(f"{path}.headers", "must include 'from' (RFC 6376 5.4)")
        keys.append(DkimKey(
            domain=domain, selector=selector, algorithm=algorithm,
            key_file=key_file if isinstance(key_file, str) else None,
            key_secret=key_secret if isinstance(key_secret, str) else None,
            headers=lowered,
        ))
    return tuple(keys)


def _retry(c: _Checker, t: dict[str, Any]) -> Retry:
    c.keys(t, {"first", "factor", "cap", "jitter", "max_age", "site_backoff"}, "retry")
    d = Retry()
    retry = Retry(
        first=c.get(t, "first", "retry", parse_duration, d.first),
        factor=c.get(t, "factor", "retry", _factor, d.factor),
        cap=c.get(t, "cap", "retry", parse_duration, d.cap),
        jitter=c.get(t, "jitter", "retry", _fraction, d.jitter),
        max_age=c.get(t, "max_age", "retry", parse_duration, d.max_age),
        site_backoff=c.get(t, "site_backoff", "retry", parse_duration, d.site_backoff),
    )
    # Leave a day of margin: a message re-enqueued near the end must still be read.
    if retry.max_age > SQS_MAX_RETENTION_S - 86400:
        c.error("retry.max_age", "must be at most 13d (SQS deletes messages after 14 days)")
    if retry.first <= 0:
        c.error("retry.first", "must be positive")
    if retry.cap < retry.first:
        c.error("retry.cap", "must be at least retry.first")
    return retry


def _delivery(c: _Checker, t: dict[str, Any]) -> Delivery:
    c.keys(
        t,
        {"ehlo", "port", "verify_tls", "tls_ca_file", "allow_networks", "connect_timeout",
         "command_timeout", "routes", "signing_processes", "signing_threads",
         "pipeline_next"},
        "delivery",
    )
    d = Delivery()
    port = c.get(t, "port", "delivery", _port, d.port)
    routes: list[tuple[str, str]] = []
    raw_routes = t.get("routes", {})
    if not isinstance(raw_routes, dict):
        c.error("delivery.routes", "expected a table of domain = 'host[:port]'")
        raw_routes = {}
    for domain, target in raw_routes.items():
        if not isinstance(target, str) or not target:
            c.error(f"delivery.routes.{domain}", "expected 'host' or 'host:port'")
            continue
        routes.append((domain.lower(), target))
    threads = c.get(t, "signing_threads", "delivery", _thread_count, d.signing_threads)
    # A policy written before signing_processes existed says signing_threads alone,
    # and keeps its threads; one that says neither gets the default process.
    processes = c.get(t, "signing_processes", "delivery", _thread_count,
                      0 if "signing_threads" in t else d.signing_processes)
    if processes and threads:
        c.error("delivery.signing_processes",
                "set signing_processes or signing_threads, not both (0 for the other)")
    return Delivery(
        ehlo=c.get(t, "ehlo", "delivery", _hostname, d.ehlo),
        port=port,
        verify_tls=c.get(t, "verify_tls", "delivery", _boolean, None),
        tls_ca_file=c.get(t, "tls_ca_file", "delivery", _text, d.tls_ca_file),
        allow_networks=_networks(c, t, "delivery"),
        connect_timeout=c.get(t, "connect_timeout", "delivery", parse_duration, d.connect_timeout),
        command_timeout=c.get(t, "command_timeout", "delivery", parse_duration, d.command_timeout),
        routes=tuple(routes),
        signing_processes=processes,
        signing_threads=threads,
        pipeline_next=c.get(t, "pipeline_next", "delivery", _boolean, d.pipeline_next),
    )


def _tls_mode(value: Any) -> TlsMode:
    for mode in TLS_MODES:
        if value == mode:
            return mode
    raise ValueError(f"expected one of {', '.join(TLS_MODES)}, got {value!r}")


def _tls(
    c: _Checker, t: dict[str, Any], providers: dict[str, tuple[str, ...]], *,
    verify_tls: bool | None,
) -> TlsPolicy:
    """[tls] default and [[tls.rules]]; `delivery.verify_tls` is the older spelling
    of the default (true: verify, false: opportunistic)."""
    c.keys(t, {"default", "rules"}, "tls")
    default: TlsMode
    if "default" in t:
        default = c.get(t, "default", "tls", _tls_mode, "opportunistic")
        if verify_tls is not None:
            c.warnings.append("delivery.verify_tls is ignored: tls.default is set")
    else:
        default = "verify" if verify_tls else "opportunistic"
    raw = t.get("rules", [])
    if not isinstance(raw, list):
        c.error("tls.rules", "expected an array of tables ([[tls.rules]])")
        raw = []
    rules: list[TlsRule] = []
    for i, item in enumerate(raw):
        path = f"tls.rules[{i}]"
        if not isinstance(item, dict):
            c.error(path, "expected a table")
            continue
        c.keys(item, {"provider", "domain", "mx", "mode"}, path)
        scopes = [k for k in ("provider", "domain", "mx") if k in item]
        if len(scopes) != 1:
            c.error(path, "name exactly one of provider, domain, mx")
            continue
        scope = scopes[0]
        pattern = c.get(item, scope, path, _pattern, "*")
        if scope == "provider" and pattern not in providers and "*" not in pattern:
            c.error(f"{path}.provider", f"unknown provider {pattern!r}")
        if "mode" not in item:
            c.error(f"{path}.mode", f"required: one of {', '.join(TLS_MODES)}")
        rules.append(TlsRule(
            scope=scope,  # type: ignore[arg-type]
            pattern=pattern,
            mode=c.get(item, "mode", path, _tls_mode, default),
            index=i,
        ))
    return TlsPolicy(default=default, rules=tuple(rules))


def _thread_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS:
        raise ValueError(f"expected a whole number 0-{MAX_THREADS}, got {value!r}")
    return value


def _intake(c: _Checker, t: dict[str, Any]) -> Intake:
    c.keys(
        t,
        {"receivers", "max_inflight_messages", "max_inflight_bytes", "visibility_timeout",
         "drain_deadline", "spill_threshold", "heartbeat"},
        "intake",
    )
    d = Intake()
    intake = Intake(
        receivers=c.get(t, "receivers", "intake", _positive_int, d.receivers),
        max_inflight_messages=c.get(
            t, "max_inflight_messages", "intake", _positive_int, d.max_inflight_messages
        ),
        max_inflight_bytes=c.get(
            t, "max_inflight_bytes", "intake", parse_size, d.max_inflight_bytes
        ),
        visibility_timeout=c.get(
            t, "visibility_timeout", "intake", parse_duration, d.visibility_timeout
        ),
        drain_deadline=c.get(t, "drain_deadline", "intake", parse_duration, d.drain_deadline),
        spill_threshold=c.get(t, "spill_threshold", "intake", parse_size, d.spill_threshold),
        heartbeat=c.get(t, "heartbeat", "intake", parse_duration, d.heartbeat),
    )
    if not 30 <= intake.visibility_timeout <= 12 * 3600:
        c.error("intake.visibility_timeout", "must be between 30s and 12h (SQS limits)")
    if intake.spill_threshold > 240 * 1024:
        c.error("intake.spill_threshold", "must be at most 240KiB (SQS caps a message at 256 KiB)")
    return intake


# The sections whose allow-lists open destinations the sender and proxies refuse.
_ALLOW_LIST_SECTIONS = ("delivery", "proxy")


def _local_only(c: _Checker, data: Mapping[str, Any]) -> bool:
    """`local_only`, and the rule it guards: outside a local stack, no allow-list may
    reach a forbidden range (quiver.routing.safety's table), or one hostile MX record
    (or PROXY header) could aim a deployed sender at the VPC or the metadata service.
    """
    local_only = c.get(data, "local_only", "", _boolean, False)
    if local_only:
        return True
    for section in _ALLOW_LIST_SECTIONS:
        table = data.get(section)
        nets = table.get("allow_networks") if isinstance(table, dict) else None
        if not isinstance(nets, list):
            continue  # absent, or already reported by the section's own checks
        for i, raw in enumerate(nets):
            try:
                overlaps = forbidden_overlaps(_network(raw))
            except ValueError:
                continue  # reported as not a network
            if overlaps:
                c.error(
                    f"{section}.allow_networks[{i}]",
                    f"{raw} opens forbidden destinations: {_describe(overlaps)}; only a "
                    "policy with local_only = true (a local stack's, which the CDK app "
                    "refuses to deploy) may allow them",
                )
    return False


def _describe(ranges: list[tuple[IPNetwork, str]]) -> str:
    """'private (10.0.0.0/8, 192.168.0.0/16), loopback (127.0.0.0/8)'"""
    by_class: dict[str, list[str]] = {}
    for net, why in ranges:
        by_class.setdefault(why, []).append(str(net))
    return ", ".join(f"{why} ({', '.join(nets)})" for why, nets in by_class.items())


def _content(c: _Checker, t: dict[str, Any]) -> Content:
    c.keys(t, {"max_message_size", "long_lines", "eight_bit"}, "content")
    d = Content()
    size = c.get(t, "max_message_size", "content", parse_size, d.max_message_size)
    if not MIN_MESSAGE_SIZE <= size <= MAX_MESSAGE_SIZE:
        c.error("content.max_message_size", "must be between 1KiB and 100MiB (the sender "
                "holds a message in memory while it is delivered)")
    long_lines = t.get("long_lines", d.long_lines)
    if long_lines not in ("reencode", "refuse"):
        c.error("content.long_lines", f"expected 'reencode' or 'refuse', got {long_lines!r}")
        long_lines = d.long_lines
    eight_bit = t.get("eight_bit", d.eight_bit)
    if eight_bit not in ("declare", "downgrade"):
        c.error("content.eight_bit", f"expected 'declare' or 'downgrade', got {eight_bit!r}")
        eight_bit = d.eight_bit
    return Content(max_message_size=size, long_lines=long_lines, eight_bit=eight_bit)
