"""The `[tenants.<name>]` policy sections: who may inject mail, from which domains, how
fast. Read by the ingresses (HTTP API, SMTP listener); a sender never reads them.

    [tenants.acme]
    domains = ["acme.example", "mail.shop.example"]
    max_connections = 20
    max_messages_per_second = 200
    iam_roles = ["arn:aws:iam::123456789012:role/acme-mailer"]

`domains` are the tenant's verified sending domains. An address is in a tenant's
domain when its domain is one of them or a subdomain of one (`news.acme.example`
under `acme.example`), as a verified SES domain identity covers its subdomains. The
most specific listed domain decides: with `example.com` listed for one tenant and
`mail.example.com` for another, `a@x.mail.example.com` belongs to the second only,
so a tenant that owns a parent domain still cannot send as the tenant that was
given one of its subdomains. A domain listed twice (two tenants, or one twice) is a
policy error: nobody could say whose it is.

An injected message's envelope sender and every address of its From header must be
in the caller's domains (`tenant_may_send_from`). The null reverse-path (`<>`, for
delivery status notifications) is refused: it names no domain to check, and an
application that injects mail has no DSNs to send.

`max_connections` bounds a tenant's concurrent SMTP sessions per listener task and
`max_messages_per_second` its accepted messages per second per listener task. Per
task, not per fleet: a fleet-wide count would put a shared counter on every
message's path. The HTTP API bounds its load with its stage throttle and the
function's concurrency instead: a bucket per function instance would bound nothing.

`iam_roles` are the IAM roles whose SigV4-signed HTTP requests may inject as this
tenant (the tenant named in the request's `X-Quiver-Tenant` header). A role listed
for two tenants may send for either, naming which.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.policy import SMTP
from typing import Any

from quiver.addresses import AddressError, normalize_address, normalize_domain

KEYS = frozenset({"domains", "max_connections", "max_messages_per_second", "iam_roles"})
# A tenant's name is what every event and key item carries: the envelope's label
# characters, short enough to prefix a message id ("<tenant>:<id>", 128 at most).
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Far above what one application needs and what one listener task serves (its file
# descriptors and memory): a typo ("20000" for "200") is caught, a real need is not.
MAX_CONNECTIONS_LIMIT = 10_000
MAX_RATE_LIMIT = 100_000.0
DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_MAX_MESSAGES_PER_SECOND = 100.0
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    # Lower-case A-labels.
    domains: tuple[str, ...]
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_messages_per_second: float = DEFAULT_MAX_MESSAGES_PER_SECOND
    iam_roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantsPolicy:
    tenants: Mapping[str, Tenant] = field(default_factory=dict)

    def owner(self, domain: str) -> str | None:
        """The tenant whose most specific listed domain covers `domain` (A-label)."""
        best: tuple[int, str] | None = None
        for tenant in self.tenants.values():
            for listed in tenant.domains:
                if (domain == listed or domain.endswith("." + listed)) and (
                        best is None or len(listed) > best[0]):
                    best = (len(listed), tenant.name)
        return best[1] if best else None

    def tenants_of_role(self, role_arn: str) -> tuple[str, ...]:
        """The tenants `role_arn` (an IAM role ARN) may inject as."""
        return tuple(sorted(t.name for t in self.tenants.values() if role_arn in t.iam_roles))


def parse_tenants(t: Mapping[str, Any], *, error: Callable[[str, str], None]) -> TenantsPolicy:
    """The sections from the `tenants` TOML table; each problem goes to
    `error(path, message)`."""
    tenants: dict[str, Tenant] = {}
    claimed: dict[str, str] = {}
    for name, section in t.items():
        path = f"tenants.{name}"
        if not TENANT_NAME.match(name):
            error(path, "a tenant name is 1-63 characters of [A-Za-z0-9_.-], starting with "
                        "a letter or digit")
            continue
        if not isinstance(section, dict):
            error(path, f"expected a table, got {type(section).__name__}")
            continue
        tenant = _tenant(name, section, path=path, error=error)
        for domain in tenant.domains:
            if domain in claimed:
                error(f"{path}.domains", f"{domain!r} is already listed for tenant "
                                         f"{claimed[domain]!r}: a domain has one owner")
            claimed.setdefault(domain, name)
        tenants[name] = tenant
    return TenantsPolicy(tenants=tenants)


def _tenant(name: str, t: Mapping[str, Any], *, path: str,
            error: Callable[[str, str], None]) -> Tenant:
    for key in t:
        if key not in KEYS:
            error(f"{path}.{key}", "unknown key (allowed: " + ", ".join(sorted(KEYS)) + ")")
    domains: list[str] = []
    raw = t.get("domains")
    if not isinstance(raw, list) or not raw:
        error(f"{path}.domains", f"required: a non-empty list of sending domains, got {raw!r}")
        raw = []
    for i, value in enumerate(raw):
        try:
            if not isinstance(value, str):
                raise AddressError(f"expected a domain name, got {value!r}")
            domain = normalize_domain(value)
        except AddressError as exc:
            error(f"{path}.domains[{i}]", str(exc))
            continue
        if domain in domains:
            error(f"{path}.domains[{i}]", f"{domain!r} is listed twice")
            continue
        domains.append(domain)
    connections = t.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if (isinstance(connections, bool) or not isinstance(connections, int)
            or not 1 <= connections <= MAX_CONNECTIONS_LIMIT):
        error(f"{path}.max_connections",
              f"expected a whole number 1-{MAX_CONNECTIONS_LIMIT}, got {connections!r}")
        connections = DEFAULT_MAX_CONNECTIONS
    rate = t.get("max_messages_per_second", DEFAULT_MAX_MESSAGES_PER_SECOND)
    if (isinstance(rate, bool) or not isinstance(rate, int | float)
            or not 0 < rate <= MAX_RATE_LIMIT):
        error(f"{path}.max_messages_per_second",
              f"expected a number above 0, at most {MAX_RATE_LIMIT:g}, got {rate!r}")
        rate = DEFAULT_MAX_MESSAGES_PER_SECOND
    roles: list[str] = []
    raw_roles = t.get("iam_roles", [])
    if not isinstance(raw_roles, list):
        error(f"{path}.iam_roles", f"expected a list of IAM role ARNs, got {raw_roles!r}")
        raw_roles = []
    for i, role in enumerate(raw_roles):
        if not isinstance(role, str) or not _ROLE_ARN.match(role):
            error(f"{path}.iam_roles[{i}]", "expected an IAM role ARN like "
                  f"'arn:aws:iam::123456789012:role/name', got {role!r}")
            continue
        roles.append(role)
    return Tenant(name=name, domains=tuple(domains), max_connections=connections,
                  max_messages_per_second=float(rate), iam_roles=tuple(roles))


def tenant_may_send_from(policy: TenantsPolicy, tenant: str, address: str) -> str | None:
    """Why `tenant` may not send from `address` (an envelope sender or a From header
    address), or None if it may. The reason names the rule, for a client to read."""
    if tenant not in policy.tenants:
        return f"unknown tenant {tenant!r}"
    if address == "":
        return "the null reverse-path (<>) is not open to tenants"
    try:
        domain = normalize_address(address).rpartition("@")[2]
    except AddressError as exc:
        return f"invalid address: {exc}"
    owner = policy.owner(domain)
    if owner != tenant:
        return (f"{domain!r} is not a verified sending domain of tenant {tenant!r} "
                "(policy tenants." + tenant + ".domains)")
    return None


def header_from_addresses(raw: bytes) -> list[str]:
    """Every address of the message's From header fields (a group or a list: each);
    ValueError when there is no From, or one that does not parse to addresses."""
    headers = BytesHeaderParser(policy=SMTP).parsebytes(raw)
    values = headers.get_all("From") or []
    if not values:
        raise ValueError("the message has no From header")
    out: list[str] = []
    for value in values:
        try:
            addresses: tuple[Address, ...] = value.addresses
        except (AttributeError, IndexError, ValueError) as exc:
            raise ValueError(f"unreadable From header: {exc}") from None
        for address in addresses:
            if not address.addr_spec or "@" not in address.addr_spec:
                raise ValueError(f"From header address {address.addr_spec!r} has no domain")
            out.append(address.addr_spec)
    if not out:
        raise ValueError("the From header names no address")
    return out


def message_refusal(policy: TenantsPolicy, tenant: str, *, envelope_from: str,
                    raw: bytes) -> tuple[str, str] | None:
    """(field, reason) when `tenant` may not send this message: its envelope sender
    (field "from") or an address of its From header (field "raw") is outside the
    tenant's domains; None when it may."""
    reason = tenant_may_send_from(policy, tenant, envelope_from)
    if reason is not None:
        return "from", reason
    try:
        addresses = header_from_addresses(raw)
    except ValueError as exc:
        return "raw", str(exc)
    for address in addresses:
        reason = tenant_may_send_from(policy, tenant, address)
        if reason is not None:
            return "raw", f"From header: {reason}"
    return None
