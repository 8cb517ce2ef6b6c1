"""Policy loading over generated well-formed policies: every valid one loads as written,
and breaking any single field gives an error that names that field's path."""

from __future__ import annotations

import copy
import ipaddress
import json
import tomllib
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quiver.policy import PolicyError, parse_policy
from quiver.units import parse_duration, parse_rate, parse_size

# --- a TOML writer for the generated data (tables, arrays of tables, inline values) ---------


def inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII only here: a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {inline(v)}" for k, v in value.items()) + "}"


def to_toml(data: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {inline(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                 and all(isinstance(x, dict) for x in v))]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {inline(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for table in value:
                lines.append(f"[[{json.dumps(key)}]]")
                lines += [f"{json.dumps(k)} = {inline(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- valid policies -------------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
HOSTNAME = st.lists(LABEL, min_size=2, max_size=4).map(".".join)
PATTERN = st.one_of(HOSTNAME, HOSTNAME.map(lambda h: "*." + h), st.just("*"))
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(low: float, high: float) -> st.SearchStrategy[str | int]:
    """A duration between low and high seconds, as text with a unit or whole seconds."""
    def written(seconds: int, unit: str) -> str | int:
        factor = DURATION_UNITS[unit]
        if unit == "ms":
            return f"{seconds * 1000}ms"
        return f"{seconds // int(factor)}{unit}" if seconds % int(factor) == 0 else seconds
    return st.builds(written, st.integers(int(low), int(high)),
                     st.sampled_from(sorted(DURATION_UNITS)))


@dataclass
class Field:
    """A field that can be broken: where it is, the path errors name, the broken values."""

    where: tuple[str | int, ...]
    path: str
    bad: tuple[Any, ...]  # DELETE removes the key instead


DELETE = object()


def key_path(*parts: str | int) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@st.composite
def policies(draw: st.DrawFn) -> tuple[dict[str, Any], list[Field]]:
    """A valid policy as TOML data, and the fields a test may break."""
    data: dict[str, Any] = {}
    fields: list[Field] = []

    def field(*where: str | int, bad: tuple[Any, ...], path: str | None = None) -> None:
        fields.append(Field(where, path or key_path(*where), bad))

    if draw(st.booleans()):
        data["version"] = 1
    fields.append(Field(("version",), "version", (2, "1")))

    # proxy nodes, then sources placed on them or sending directly
    nodes = draw(st.lists(NAME, max_size=2, unique=True))
    proxy: dict[str, Any] = {}
    if nodes:
        proxy["nodes"] = {n: {"az": f"az-{i}", "address": f"10.0.{i}.10"}
                          for i, n in enumerate(nodes)}
        for n in nodes:
            field("proxy", "nodes", n, "address", bad=("nope", 5))
            field("proxy", "nodes", n, "az", bad=(DELETE, ""))
    if draw(st.booleans()):
        proxy["protocol"] = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):
        proxy["frontend_port"] = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        proxy["allowed_ports"] = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3))
    if proxy:
        data["proxy"] = proxy
    field("proxy", "protocol", bad=(3, True))
    field("proxy", "frontend_port", bad=(0, 70000, "25"))
    field("proxy", "health_port", bad=(-1,))
    field("proxy", "allowed_ports", bad=([], [0], "25"))

    names = draw(st.lists(NAME, min_size=1, max_size=4, unique=True))
    sources: dict[str, Any] = {}
    for i, name in enumerate(names):
        source: dict[str, Any] = {"ip": f"192.0.2.{i + 1}", "ehlo": draw(HOSTNAME)}
        node = draw(st.sampled_from([None, *nodes]))
        if node is not None:
            source["node"] = node
            source["local_ip"] = f"10.0.9.{i + 1}"
        elif draw(st.booleans()):
            source["az"] = draw(st.sampled_from(["az-a", "az-b"]))
        sources[name] = source
        field("sources", name, "ip", bad=(DELETE, "300.1.1.1", "nope", 7))
        field("sources", name, "ehlo", bad=(DELETE, "-bad-", "a..b", 7))
        field("sources", name, "local_ip", bad=("nope",))
        field("sources", name, "node", bad=("no-such-node",))
        field("sources", name, "colour", bad=("blue",))  # an unknown key
    data["sources"] = sources

    pools: dict[str, Any] = {}
    for name in draw(st.lists(NAME, min_size=1, max_size=3, unique=True)):
        members = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        if draw(st.booleans()):
            pools[name] = {"sources": members}
        else:
            pools[name] = {"sources": {m: draw(st.integers(1, 10)) for m in members}}
            field("pools", name, "sources", members[0], bad=(0, -1, "1"))
        field("pools", name, "sources", bad=([], "all"))
    data["pools"] = pools
    data["default_pool"] = draw(st.sampled_from(sorted(pools)))
    field("default_pool", bad=(DELETE, 7, "no such pool " + "x" * 70))

    providers = {name: draw(st.lists(PATTERN, min_size=1, max_size=3))
                 for name in draw(st.lists(NAME, max_size=2, unique=True))}
    if providers:
        data["providers"] = providers
    for name in providers:
        field("providers", name, bad=([], "*.google.com"))

    throttles = []
    for i in range(draw(st.integers(0, 3))):
        throttle: dict[str, Any] = {}
        if draw(st.booleans()):
            throttle["source"] = draw(st.sampled_from(["*", *names]))
        scope = draw(st.sampled_from(["any", "domain", "mx", *(["provider"] if providers else [])]))
        if scope == "provider":
            throttle["provider"] = draw(st.sampled_from(sorted(providers)))
        elif scope != "any":
            throttle[scope] = draw(PATTERN)
        limits = draw(st.sets(st.sampled_from(
            ["max_connections", "max_messages_per_connection", "max_rate"]), min_size=1))
        for limit in sorted(limits):
            throttle[limit] = draw(st.integers(1, 500)) if limit != "max_rate" else (
                f"{draw(st.integers(1, 10_000))}/{draw(st.sampled_from('smh'))}")
        throttles.append(throttle)
        field("throttles", i, "source", bad=("no-such-source",))
        field("throttles", i, "max_connections", bad=(0, -3, "many"))
        field("throttles", i, "max_rate", bad=("fast", "0/s", 50))
        field("throttles", i, "provider", bad=("no-such-provider",))
    if throttles:
        data["throttles"] = throttles

    dkim = []
    for i, domain in enumerate(draw(st.lists(HOSTNAME, max_size=2, unique=True))):
        key: dict[str, Any] = {"domain": domain, "selector": draw(LABEL)}
        if draw(st.booleans()):
            key["algorithm"] = draw(st.sampled_from(["rsa-sha256", "ed25519-sha256"]))
        if draw(st.booleans()):
            key["key_file"] = f"keys/{domain}.pem"
        else:
            key["key_secret"] = f"quiver/dkim/{domain}"
        if draw(st.booleans()):
            key["headers"] = ["from", *draw(st.lists(st.sampled_from(
                ["to", "subject", "date", "message-id"]), unique=True))]
        dkim.append(key)
        field("dkim", i, "algorithm", bad=("rsa-md5",))
        field("dkim", i, "domain", bad=("-bad-", 7))
        field("dkim", i, "selector", bad=("a b",))
        field("dkim", i, "headers", bad=(["to"], "from"))
    if dkim:
        data["dkim"] = dkim

    first = draw(st.integers(1, 3600))
    retry = {
        "first": draw(duration(first, first)),
        "cap": draw(duration(first, 86400)),
        "factor": draw(st.integers(1, 4) | st.floats(1.0, 4.0)),
        "jitter": draw(st.floats(0.0, 0.99)),
        "max_age": draw(duration(60, 13 * 86400)),
        "site_backoff": draw(duration(0, 3600)),
    }
    data["retry"] = {k: v for k, v in retry.items() if draw(st.booleans()) or k in ("first",
                                                                                      "cap")}
    field("retry", "first", bad=("soon", "0s", -5))
    field("retry", "factor", bad=(0.5, "2"))
    field("retry", "jitter", bad=(1.5, -0.1, 1))
    field("retry", "max_age", bad=("20d", "later"))
    field("retry", "site_backoff", bad=("x", -1))

    delivery: dict[str, Any] = {}
    if draw(st.booleans()):
        delivery["port"] = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        delivery["ehlo"] = draw(HOSTNAME)
    if draw(st.booleans()):
        delivery["connect_timeout"] = draw(duration(1, 300))
    if draw(st.booleans()):
        delivery["signing_threads"] = draw(st.integers(0, 16))
    elif draw(st.booleans()):
        delivery["signing_processes"] = draw(st.integers(0, 16))
    if draw(st.booleans()):
        delivery["pipeline_next"] = draw(st.booleans())
    routes = {d: draw(HOSTNAME) for d in draw(st.lists(HOSTNAME, max_size=2, unique=True))}
    if routes:
        delivery["routes"] = routes
    for domain in routes:
        field("delivery", "routes", domain, bad=("", 25))
    if delivery:
        data["delivery"] = delivery
    field("delivery", "port", bad=(0, 65536, "25"))
    field("delivery", "ehlo", bad=("bad host",))
    field("delivery", "connect_timeout", bad=("-1s", "forever"))
    field("delivery", "signing_threads", bad=(-1, 17, 1.5, True))
    field("delivery", "signing_processes", bad=(-1, 17, 1.5, True))
    field("delivery", "pipeline_next", bad=(1, "no"))

    intake: dict[str, Any] = {}
    if draw(st.booleans()):
        intake["receivers"] = draw(st.integers(1, 16))
    if draw(st.booleans()):
        intake["visibility_timeout"] = draw(duration(30, 12 * 3600))
    if draw(st.booleans()):
        intake["max_inflight_bytes"] = f"{draw(st.integers(1, 1024))}MiB"
    if draw(st.booleans()):
        intake["spill_threshold"] = f"{draw(st.integers(1, 240))}KiB"
    if intake:
        data["intake"] = intake
    field("intake", "receivers", bad=(0, "4"))
    field("intake", "max_inflight_messages", bad=(-1,))
    field("intake", "max_inflight_bytes", bad=("lots",))
    field("intake", "visibility_timeout", bad=("1s", "13h"))
    field("intake", "spill_threshold", bad=("1MiB",))
    field("intake", "heartbeat", bad=("x",))

    fields.append(Field(("typo",), "typo", ("anything",)))  # an unknown top-level key
    return data, fields


def seconds(value: str | int) -> float:
    return parse_duration(value)


@settings(max_examples=100)
@given(policies())
def test_every_valid_policy_loads_as_written(generated: tuple[dict[str, Any], list[Field]]
                                             ) -> None:
    data, _ = generated
    text = to_toml(data)
    assert tomllib.loads(text) == data  # the writer wrote what was generated
    policy = parse_policy(text)

    assert policy.default_pool == data["default_pool"] and policy.default_pool in policy.pools
    assert set(policy.sources) == set(data["sources"])
    nodes = data.get("proxy", {}).get("nodes", {})
    assert set(policy.proxy.nodes) == set(nodes)
    for name, raw in data["sources"].items():
        source = policy.sources[name]
        assert source.ip == str(ipaddress.ip_address(raw["ip"]))
        assert source.ehlo == raw["ehlo"].lower()
        assert source.node == raw.get("node") and source.local_ip == raw.get("local_ip")
        assert source.az == (nodes[raw["node"]]["az"] if "node" in raw else raw.get("az", "local"))
        assert (policy.frontend(source) is None) == ("node" not in raw)
    for name, raw in data["pools"].items():
        members = raw["sources"]
        weights = members if isinstance(members, dict) else {m: 1 for m in members}
        assert policy.pools[name].sources == tuple(weights.items())
        assert all(s in policy.sources for s, _ in policy.pools[name].sources)
    assert policy.providers == {k: tuple(p.lower() for p in v)
                                for k, v in data.get("providers", {}).items()}
    assert len(policy.throttles) == len(data.get("throttles", []))
    for throttle, raw in zip(policy.throttles, data.get("throttles", []), strict=True):
        assert throttle.source == raw.get("source", "*")
        assert throttle.max_connections == raw.get("max_connections")
        assert throttle.max_rate == (parse_rate(raw["max_rate"]) if "max_rate" in raw else None)
    assert [(k.domain, k.selector) for k in policy.dkim] == [
        (k["domain"], k["selector"]) for k in data.get("dkim", [])]
    retry = data["retry"]
    assert policy.retry.first == seconds(retry["first"])
    assert policy.retry.cap == seconds(retry["cap"]) >= policy.retry.first
    if "max_age" in retry:
        assert policy.retry.max_age == seconds(retry["max_age"])
    intake = data.get("intake", {})
    if "visibility_timeout" in intake:
        assert policy.intake.visibility_timeout == seconds(intake["visibility_timeout"])
    if "spill_threshold" in intake:
        assert policy.intake.spill_threshold == parse_size(intake["spill_threshold"])
    assert dict(policy.delivery.routes) == data.get("delivery", {}).get("routes", {})


def broken(data: dict[str, Any], where: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    parent: Any = out
    for i, part in enumerate(where[:-1]):
        if isinstance(parent, dict) and part not in parent:
            parent[part] = [] if isinstance(where[i + 1], int) else {}
        parent = parent[part]
    if value is DELETE:
        parent.pop(where[-1], None)
    else:
        parent[where[-1]] = value
    return out


@settings(max_examples=200)
@given(policies(), st.data())
def test_breaking_any_one_field_names_that_field(
        generated: tuple[dict[str, Any], list[Field]], data: st.DataObject) -> None:
    valid, fields = generated
    target = data.draw(st.sampled_from(fields))
    value = data.draw(st.sampled_from(target.bad))
    if value is DELETE and not _present(valid, target.where):
        return  # nothing to remove
    text = to_toml(broken(valid, target.where, value))
    try:
        parse_policy(text, origin="generated.toml")
    except PolicyError as exc:
        named = [p for p in exc.problems if p.startswith(f"{target.path}:")
                 or p.startswith(f"{target.path}.")]
        assert named, (target.path, value, exc.problems)
    else:
        raise AssertionError(f"{target.path} = {value!r} was accepted:\n{text}")


def _present(data: dict[str, Any], where: tuple[str | int, ...]) -> bool:
    node: Any = data
    for part in where:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


# --- what the properties found, pinned as examples ----------------------------------------

MINIMAL = """
default_pool = "p"
[sources.Tx1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[sources.tx1]
ip = "192.0.2.2"
ehlo = "o2.example.com"
[pools.p]
sources = ["Tx1", "tx1"]
"""


def test_an_ip_written_as_a_number_is_refused_not_read_as_0_0_0_7() -> None:
    try:
        parse_policy(MINIMAL.replace('ip = "192.0.2.1"', "ip = 7"))
    except PolicyError as exc:
        assert any(p.startswith("sources.Tx1.ip: expected an IP address") for p in exc.problems)
    else:
        raise AssertionError("ip = 7 was accepted")


def test_a_throttle_names_its_source_and_provider_with_their_case() -> None:
    policy = parse_policy(MINIMAL + '[providers]\nBigMail = ["*.bigmail.test"]\n'
                          '[[throttles]]\nsource = "Tx1"\nprovider = "BigMail"\n'
                          'max_connections = 2\n'
                          '[[throttles]]\nsource = "tx1"\ndomain = "Example.TEST"\n'
                          'max_connections = 3\n')
    first, second = policy.throttles
    assert (first.source, first.pattern) == ("Tx1", "BigMail")  # not tx1's, not unknown
    assert (second.source, second.pattern) == ("tx1", "example.test")  # DNS: any case
