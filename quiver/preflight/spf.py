"""A small SPF evaluator (RFC 7208 check_host) for preflight: does a domain's SPF
record authorize a source IP?

It evaluates ip4, ip6, a, mx, ptr, exists, include, all and redirect, with macros,
and keeps RFC 7208's limits: at most 10 terms that cause DNS lookups (4.6.4), at most
10 MX or PTR names per mechanism, and at most 2 lookups that find nothing (void
lookups). A record is never trusted to be well formed: anything unparsable is a
permerror, as a receiver would judge it, never an exception.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, ParamSpec, Protocol, TypeVar

from quiver.preflight.lookup import LookupFailed

_P = ParamSpec("_P")
_T = TypeVar("_T")
Result = Literal["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"]

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4
MAX_NAMES_PER_MECHANISM = 10  # MX and PTR (RFC 7208 4.6.4)
# Longer domain-specs or expansions than a DNS name cannot be looked up (RFC 7208 7.3).
MAX_DOMAIN = 253
MAX_RECORD = 4096

_QUALIFIERS: dict[str, Result] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISM = re.compile(r"^([+\-~?]?)([a-z0-9]+)(?::(.*?))?((?:/\d+)?(?://\d+)?)$", re.I)
_CIDR = re.compile(r"^(?:/(\d+))?(?://(\d+))?$")
_MODIFIER = re.compile(r"^([a-z][a-z0-9_.\-]*)=(.*)$", re.I)
_MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}", re.I)


class SpfDns(Protocol):
    def txt(self, name: str) -> list[str]: ...
    def addresses(self, name: str, *, family: int = 0) -> list[str]: ...
    def mx(self, name: str) -> list[tuple[int, str]]: ...
    def ptr(self, ip: str) -> list[str]: ...


class _Stop(Exception):
    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(slots=True)
class Verdict:
    result: Result
    reason: str
    # Every domain whose record was read, in order (includes and redirects too).
    visited: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _State:
    dns: SpfDns
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    dns_terms: int = 0
    void_lookups: int = 0
    visited: list[str] = field(default_factory=list)

    def count_term(self, what: str) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _Stop("permerror", f"more than {MAX_DNS_TERMS} DNS-querying terms ({what})")

    def void(self, found: list[str] | list[tuple[int, str]], what: str) -> None:
        if not found:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _Stop("permerror", f"more than {MAX_VOID_LOOKUPS} void lookups ({what})")


def check_host(
    dns: SpfDns, *, ip: str, domain: str, sender: str | None = None, helo: str | None = None,
) -> Verdict:
    """The SPF result for mail from `ip` with MAIL FROM `sender` (postmaster@domain)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return Verdict("permerror", f"{ip!r} is not an IP address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    state = _State(dns=dns, ip=address, sender=sender or f"postmaster@{domain}",
                   helo=helo or domain)
    try:
        result, reason = _evaluate(state, domain.lower().rstrip("."), depth=0)
    except _Stop as stop:
        result, reason = stop.result, stop.reason
    return Verdict(result, reason, state.visited)


def spf_records(texts: list[str]) -> list[str]:
    """The TXT records that are SPF version 1 records (RFC 7208 4.5)."""
    return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


def _ask(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """One DNS query; a resolver failure ends the evaluation with temperror."""
    try:
        return fn(*args, **kwargs)
    except LookupFailed as exc:
        raise _Stop("temperror", str(exc)) from None


def _evaluate(state: _State, domain: str, *, depth: int) -> tuple[Result, str]:
    if depth > MAX_DNS_TERMS:  # unreachable within the term limit; a guard all the same
        raise _Stop("permerror", "include/redirect nesting too deep")
    if not _valid_domain(domain):
        return "none", f"{domain!r} is not a domain name"
    state.visited.append(domain)
    records = spf_records(_ask(state.dns.txt, domain))
    if not records:
        return "none", f"{domain} has no SPF record"
    if len(records) > 1:
        return "permerror", f"{domain} has {len(records)} SPF records (RFC 7208 4.5)"
    record = records[0]
    if len(record) > MAX_RECORD:
        return "permerror", f"{domain}'s SPF record is over {MAX_RECORD} characters"
    terms = record.split()[1:]
    redirect: str | None = None
    seen_modifiers: set[str] = set()
    directives: list[tuple[Result, str, str | None, str]] = []
    for term in terms:
        modifier = _MODIFIER.match(term)
        if modifier is not None and ":" not in modifier.group(1):
            name = modifier.group(1).lower()
            if name in ("redirect", "exp"):
                if name in seen_modifiers:
                    return "permerror", f"{domain}: {name}= appears twice"
                seen_modifiers.add(name)
                if name == "redirect":
                    redirect = modifier.group(2)
            continue  # unknown modifiers are ignored (RFC 7208 6)
        mechanism = _MECHANISM.match(term)
        if mechanism is None:
            return "permerror", f"{domain}: cannot parse term {term!r}"
        qualifier, name, argument, cidr = mechanism.groups()
        directives.append((_QUALIFIERS[qualifier or "+"], name.lower(), argument, cidr))
    for qualifier, name, argument, cidr in directives:
        if _matches(state, domain, name, argument, cidr, depth=depth):
            shown = name + (f":{argument}" if argument is not None else "") + cidr
            return qualifier, f"{domain}: matched {shown}"
    if redirect is not None and not any(n == "all" for _, n, _, _ in directives):
        state.count_term("redirect")
        target = _expand(state, redirect, domain)
        result, reason = _evaluate(state, target, depth=depth + 1)
        if result == "none":
            return "permerror", f"{domain}: redirect={target} has no SPF record"
        return result, reason
    return "neutral", f"{domain}: no mechanism matched {state.ip}"


def _matches(state: _State, domain: str, name: str, argument: str | None, cidr: str,
             *, depth: int) -> bool:
    if name == "all":
        if argument is not None or cidr:
            raise _Stop("permerror", f"{domain}: 'all' takes no argument")
        return True
    if name in ("ip4", "ip6"):
        return _ip_matches(state, domain, name, argument, cidr)
    if name == "include":
        if argument is None or cidr:
            raise _Stop("permerror", f"{domain}: include needs a domain")
        state.count_term("include")
        target = _expand(state, argument, domain)
        result, reason = _evaluate(state, target, depth=depth + 1)
        if result == "pass":
            return True
        if result in ("temperror", "permerror"):
            raise _Stop(result, reason)
        if result == "none":
            raise _Stop("permerror", f"{domain}: include:{target} has no SPF record")
        return False
    if name not in ("a", "mx", "ptr", "exists"):
        raise _Stop("permerror", f"{domain}: unknown mechanism {name!r}")
    state.count_term(name)
    target = domain if argument is None else _expand(state, argument, domain)
    if name == "exists":
        if argument is None or cidr:
            raise _Stop("permerror", f"{domain}: exists needs a domain")
        found = _ask(state.dns.addresses, target, family=4)
        state.void(found, f"exists:{target}")
        return bool(found)
    if name == "ptr":
        if cidr:
            raise _Stop("permerror", f"{domain}: ptr takes no CIDR length")
        return _ptr_matches(state, target)
    v4, v6 = _cidr_lengths(domain, cidr)
    hosts = [target]
    if name == "mx":
        exchanges = _ask(state.dns.mx, target)
        state.void(exchanges, f"mx:{target}")
        hosts = [host for _, host in exchanges if host]
        if len(hosts) > MAX_NAMES_PER_MECHANISM:
            raise _Stop("permerror", f"mx:{target} has more than {MAX_NAMES_PER_MECHANISM} MXes")
    family = 4 if state.ip.version == 4 else 6
    for host in hosts:
        addresses = _ask(state.dns.addresses, host, family=family)
        if name == "a":
            state.void(addresses, f"a:{host}")
        length = v4 if family == 4 else v6
        for text in addresses:
            try:
                network = ipaddress.ip_network(f"{text}/{length}", strict=False)
            except ValueError:
                continue
            if state.ip in network:
                return True
    return False


def _ip_matches(state: _State, domain: str, name: str, argument: str | None,
                cidr: str) -> bool:
    if argument is None or "//" in cidr:
        raise _Stop("permerror", f"{domain}: {name} needs an address")
    try:
        network = ipaddress.ip_network(argument + cidr, strict=False)
        if "/" in argument:
            raise ValueError(argument)
    except ValueError:
        raise _Stop("permerror", f"{domain}: bad {name}:{argument}{cidr}") from None
    if (name == "ip4") != (network.version == 4):
        raise _Stop("permerror", f"{domain}: {name}:{argument} is of the other family")
    return network.version == state.ip.version and state.ip in network


def _ptr_matches(state: _State, target: str) -> bool:
    names = _ask(state.dns.ptr, str(state.ip))
    state.void(names, "ptr")
    family = state.ip.version
    for host in names[:MAX_NAMES_PER_MECHANISM]:
        found = _ask(state.dns.addresses, host, family=family)
        if str(state.ip) in found and (host == target or host.endswith("." + target)):
            return True
    return False


def _cidr_lengths(domain: str, cidr: str) -> tuple[int, int]:
    match = _CIDR.match(cidr)
    if match is None:
        raise _Stop("permerror", f"{domain}: bad CIDR length {cidr!r}")
    v4 = int(match.group(1)) if match.group(1) else 32
    v6 = int(match.group(2)) if match.group(2) else 128
    if v4 > 32 or v6 > 128:
        raise _Stop("permerror", f"{domain}: CIDR length {cidr!r} out of range")
    return v4, v6


def _expand(state: _State, spec: str, domain: str) -> str:
    """A domain-spec with its macros expanded (RFC 7208 7); permerror if malformed."""
    local, _, sender_domain = state.sender.rpartition("@")
    values = {
        "s": state.sender, "l": local or "postmaster", "o": sender_domain, "d": domain,
        "i": _dotted(state.ip), "p": "unknown", "h": state.helo,
        "v": "in-addr" if state.ip.version == 4 else "ip6",
    }
    out: list[str] = []
    i = 0
    while i < len(spec):
        char = spec[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        following = spec[i + 1:i + 2]
        if following == "%":
            out.append("%")
            i += 2
        elif following == "_":
            out.append(" ")
            i += 2
        elif following == "-":
            out.append("%20")
            i += 2
        else:
            macro = _MACRO.match(spec, i)
            if macro is None or macro.group(1).lower() not in values:
                raise _Stop("permerror", f"{domain}: bad macro in {spec!r}")
            letter, digits, reverse, delimiters = macro.groups()
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
            if reverse:
                parts.reverse()
            if digits:
                keep = int(digits)
                if keep == 0:
                    raise _Stop("permerror", f"{domain}: macro keeps 0 labels in {spec!r}")
                parts = parts[-keep:]
            out.append(".".join(parts))
            i = macro.end()
    expanded = "".join(out).rstrip(".").lower()
    while len(expanded) > MAX_DOMAIN and "." in expanded:  # RFC 7208 7.3: drop left labels
        expanded = expanded.split(".", 1)[1]
    if not _valid_domain(expanded):
        raise _Stop("permerror", f"{domain}: {spec!r} is not a domain name")
    return expanded


def _dotted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _valid_domain(name: str) -> bool:
    labels = name.split(".")
    return (0 < len(name) <= MAX_DOMAIN and len(labels) >= 2
            and all(0 < len(label) <= 63 for label in labels)
            and all(0x21 <= ord(c) < 0x7F for c in name))
