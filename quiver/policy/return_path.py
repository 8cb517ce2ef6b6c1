"""The `[return_path]` policy section: which bounce domain a sending domain's mail
uses as its envelope sender (signed VERP, quiver.returnpath), and where the keys are.

    [return_path]
    key_secret = "quiver/return-path/keys"   # or key_file = "return-path-keys.json"

    [[return_path.domains]]
    from = "example.com"                     # the From: header's domain
    bounce = "bounces.example.com"           # MAIL FROM b-<token>@bounces.example.com
    # tenant = "acme"                        # only this tenant's mail (optional)
    # organizational_domain = "example.com"  # see below

DMARC passes on SPF only when the envelope sender's domain is aligned with the
From domain; relaxed alignment means the same organizational domain. Without the
public suffix list the policy cannot compute one, so it accepts what is aligned
whatever the suffix: the bounce domain is the From domain or under it. Where the
two are siblings (From `mail.example.com`, bounce `bounces.example.com`), the
entry names the organizational domain they share, and both must be under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_TENANT = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


@dataclass(frozen=True, slots=True)
class ReturnPathDomain:
    from_domain: str
    bounce_domain: str
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class ReturnPathPolicy:
    domains: tuple[ReturnPathDomain, ...] = ()
    key_secret: str | None = None
    key_file: str | None = None
    # (tenant, from domain) → bounce domain; tenant None for entries without one.
    _index: dict[tuple[str | None, str], str] = field(default_factory=dict, compare=False,
                                                      repr=False)

    def __post_init__(self) -> None:
        for d in self.domains:
            self._index[(d.tenant, d.from_domain)] = d.bounce_domain

    @property
    def enabled(self) -> bool:
        return bool(self.domains)

    def bounce_domain(self, from_domain: str, *, tenant: str | None) -> str | None:
        """The bounce domain for mail From `from_domain` (lower case) of `tenant`: the
        tenant's own entry, else the entry without a tenant; None: not rewritten."""
        if tenant is not None:
            found = self._index.get((tenant, from_domain))
            if found is not None:
                return found
        return self._index.get((None, from_domain))

    def bounce_domains(self) -> dict[str, frozenset[str] | None]:
        """Each bounce domain → the tenants whose mail may use it (None: any tenant),
        for verification's other_tenant check."""
        out: dict[str, frozenset[str] | None] = {}
        for d in self.domains:
            if d.tenant is None:
                out[d.bounce_domain] = None
            elif d.bounce_domain not in out:
                out[d.bounce_domain] = frozenset({d.tenant})
            else:
                tenants = out[d.bounce_domain]
                if tenants is not None:
                    out[d.bounce_domain] = tenants | {d.tenant}
        return out


def aligned(from_domain: str, bounce_domain: str, organizational: str | None = None) -> bool:
    """Relaxed DMARC alignment as far as it can be told without the public suffix list:
    the bounce domain is the From domain or under it, or both are under the declared
    organizational domain."""
    if _under(bounce_domain, from_domain):
        return True
    return organizational is not None and _under(from_domain, organizational) and _under(
        bounce_domain, organizational)


def _under(name: str, parent: str) -> bool:
    return name == parent or name.endswith("." + parent)


def parse_return_path(raw: Any) -> tuple[ReturnPathPolicy, list[tuple[str, str]]]:
    """The section and its problems as (path, message); an empty section is off."""
    problems: list[tuple[str, str]] = []
    if raw is None:
        return ReturnPathPolicy(), problems
    if not isinstance(raw, dict):
        return ReturnPathPolicy(), [("return_path", "expected a table")]
    for key in raw:
        if key not in ("key_secret", "key_file", "domains"):
            problems.append((f"return_path.{key}",
                             "unknown key (allowed: domains, key_file, key_secret)"))
    key_secret, key_file = raw.get("key_secret"), raw.get("key_file")
    for name, value in (("key_secret", key_secret), ("key_file", key_file)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append((f"return_path.{name}", f"expected a non-empty string, got {value!r}"))
    items = raw.get("domains", [])
    if not isinstance(items, list):
        problems.append(("return_path.domains", "expected an array of tables "
                         "([[return_path.domains]])"))
        items = []
    domains: list[ReturnPathDomain] = []
    seen: set[tuple[str | None, str]] = set()
    for i, item in enumerate(items):
        path = f"return_path.domains[{i}]"
        entry = _domain(item, path, problems)
        if entry is None:
            continue
        key = (entry.tenant, entry.from_domain)
        if key in seen:
            problems.append((path, f"{entry.from_domain} has a bounce domain already"
                             + (f" for tenant {entry.tenant}" if entry.tenant else "")))
        seen.add(key)
        domains.append(entry)
    if domains and (key_secret is None) == (key_file is None):
        problems.append(("return_path", "set exactly one of key_secret (a Secrets Manager "
                         "id) or key_file (a JSON key ring): return paths are signed"))
    policy = ReturnPathPolicy(
        domains=tuple(domains),
        key_secret=key_secret if isinstance(key_secret, str) and key_secret else None,
        key_file=key_file if isinstance(key_file, str) and key_file else None,
    )
    return policy, problems


def _domain(item: Any, path: str,
            problems: list[tuple[str, str]]) -> ReturnPathDomain | None:
    if not isinstance(item, dict):
        problems.append((path, "expected a table"))
        return None
    for key in item:
        if key not in ("from", "bounce", "tenant", "organizational_domain"):
            problems.append((f"{path}.{key}", "unknown key (allowed: bounce, from, "
                             "organizational_domain, tenant)"))
    names: dict[str, str | None] = {}
    for key in ("from", "bounce", "organizational_domain"):
        value = item.get(key)
        if value is None:
            if key != "organizational_domain":
                problems.append((f"{path}.{key}", "required: a domain name"))
            names[key] = None
            continue
        name = value.rstrip(".").lower() if isinstance(value, str) else ""
        if not _HOSTNAME.match(name) or (key != "organizational_domain" and "." not in name):
            problems.append((f"{path}.{key}", f"expected a domain name, got {value!r}"))
            return None
        names[key] = name
    tenant = item.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not _TENANT.match(tenant)):
        problems.append((f"{path}.tenant", f"expected a tenant name, got {tenant!r}"))
        return None
    from_domain, bounce, org = names["from"], names["bounce"], names["organizational_domain"]
    if from_domain is None or bounce is None:
        return None
    if org is not None and "." not in org:
        problems.append((f"{path}.organizational_domain",
                         f"{org} is a top-level domain, not an organizational domain"))
        return None
    if not aligned(from_domain, bounce, org):
        hint = (f"use {bounce.split('.', 1)[0]}.{from_domain}, or name the organizational "
                "domain both are under (organizational_domain)") if org is None else (
                f"both must be under {org}")
        problems.append((f"{path}.bounce", f"{bounce} is not aligned with {from_domain} "
                         f"(relaxed DMARC alignment: SPF on the return path would not count "
                         f"for DMARC); {hint}"))
        return None
    return ReturnPathDomain(from_domain=from_domain, bounce_domain=bounce, tenant=tenant)
