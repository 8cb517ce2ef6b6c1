"""The `[unsubscribe]` policy section: one-click unsubscribe (RFC 8058) per sending
domain and tenant.

    [[unsubscribe.domains]]
    from = "example.com"                        # the From: header's domain
    url = "https://unsubscribe.example.com/u/"  # the endpoint; the token follows
    mailto = "unsubscribe@bounces.example.com"  # optional, on a bounce or FBL domain
    # tenant = "acme"                           # only this tenant's mail (optional)
    # add = "when_missing"                      # or "never"

With an entry, the sender adds to a message that has neither header

    List-Unsubscribe: <https://unsubscribe.example.com/u/<token>>,
     <mailto:unsubscribe@bounces.example.com?subject=unsubscribe-<token>>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

before DKIM signing. The token names tenant, campaign, message id and recipient
and is signed with the return-path key ring (`[return_path] key_secret` or
`key_file`), so an entry needs one. A `mailto` address must be on a domain that
SES receives for Quiver, a `[return_path]` bounce domain or the domain of a
`[feedback]` address: the deploy gives it a receipt rule, and the bounce intake
reads its mail (quiver.intake.unsubscribe). A message that carries either header
already keeps its own and gets neither: one pair of headers that agree is what
a mailbox provider acts on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from quiver.policy.return_path import ReturnPathPolicy

AddMode = Literal["when_missing", "never"]
ADD_MODES: tuple[AddMode, ...] = ("when_missing", "never")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=^_`{|}~.-]{1,64}$")
_TENANT = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
# The URL goes into a header with a token after it (about 100 characters); a header
# line may be 998 octets, and some clients give up on long List-Unsubscribe values.
MAX_URL = 200
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*/$")
_KEYS = ("from", "url", "mailto", "tenant", "add")
_LOOPBACK = ("127.0.0.1", "localhost")
# The headers the signer must cover: RFC 8058 3 requires List-Unsubscribe-Post to be
# in a valid DKIM signature, or receivers ignore it.
SIGNED = ("list-unsubscribe", "list-unsubscribe-post")


class _SigningKey(Protocol):
    @property
    def domain(self) -> str: ...

    @property
    def headers(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class UnsubscribeRule:
    from_domain: str
    url: str  # https://host[:port]/path/ : the token is appended
    mailto: str | None = None
    tenant: str | None = None
    add: AddMode = "when_missing"


@dataclass(frozen=True, slots=True)
class UnsubscribePolicy:
    rules: tuple[UnsubscribeRule, ...] = ()
    _index: dict[tuple[str | None, str], UnsubscribeRule] = field(
        default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for rule in self.rules:
            self._index[(rule.tenant, rule.from_domain)] = rule

    @property
    def enabled(self) -> bool:
        return any(r.add != "never" for r in self.rules)

    def mailto_addresses(self) -> tuple[str, ...]:
        """Every rule's mailto address, lower case, each once, in order. A rule with
        add = "never" counts too: mail sent under it before still names its address."""
        return tuple(dict.fromkeys(r.mailto.lower() for r in self.rules
                                   if r.mailto is not None))

    def rule(self, from_domain: str, *, tenant: str | None) -> UnsubscribeRule | None:
        """The rule for mail From `from_domain` (lower case) of `tenant`: the tenant's
        own entry, else the entry without a tenant; None: no headers are added."""
        found = None
        if tenant is not None:
            found = self._index.get((tenant, from_domain))
        if found is None:
            found = self._index.get((None, from_domain))
        return None if found is None or found.add == "never" else found


def parse_unsubscribe(raw: Any, *, return_path: ReturnPathPolicy,
                      dkim: Sequence[_SigningKey] = (), local_only: bool = False,
                      feedback_addresses: Sequence[str] = (),
                      ) -> tuple[UnsubscribePolicy, list[str]]:
    """The section and its problems as `path: why`. `return_path` holds the key ring
    that signs the tokens and, with `feedback_addresses`, the domains SES receives
    for, where a mailto address must be; `dkim` are the policy's DKIM keys, whose
    signed headers must include both (a key naming none signs the defaults, which
    do); a `local_only` policy may point at a loopback http endpoint (the local
    stack's), and name any mailto domain: it is never deployed, so no receipt rule
    is made for it either way."""
    problems: list[str] = []
    if raw is None:
        return UnsubscribePolicy(), problems
    if not isinstance(raw, dict):
        return UnsubscribePolicy(), ["unsubscribe: expected a table"]
    for key in raw:
        if key != "domains":
            problems.append(f"unsubscribe.{key}: unknown key (allowed: domains)")
    items = raw.get("domains", [])
    if not isinstance(items, list):
        return UnsubscribePolicy(), [
            *problems, "unsubscribe.domains: expected an array of tables ([[unsubscribe.domains]])"]
    rules: list[UnsubscribeRule] = []
    seen: set[tuple[str | None, str]] = set()
    for i, item in enumerate(items):
        path = f"unsubscribe.domains[{i}]"
        rule = _rule(item, path, problems, local_only=local_only)
        if rule is None:
            continue
        if (rule.tenant, rule.from_domain) in seen:
            problems.append(f"{path}: {rule.from_domain} has an unsubscribe entry already"
                            + (f" for tenant {rule.tenant}" if rule.tenant else ""))
        seen.add((rule.tenant, rule.from_domain))
        rules.append(rule)
        if rule.mailto is not None and not local_only:
            problem = _mailto_received(rule.mailto, return_path=return_path,
                                       feedback_addresses=feedback_addresses)
            if problem:
                problems.append(f"{path}.mailto: {problem}")
        if rule.add == "never":
            continue
        for key in dkim:
            domain, headers = key.domain.lower(), {h.lower() for h in key.headers}
            missing = [h for h in SIGNED if headers and h not in headers]
            if domain == rule.from_domain and missing:
                problems.append(
                    f"{path}: the DKIM key of {domain} does not sign {', '.join(missing)}; "
                    "add them to its headers (RFC 8058: List-Unsubscribe-Post counts only "
                    "when signed)")
    policy = UnsubscribePolicy(rules=tuple(rules))
    if policy.enabled and return_path.key_secret is None and return_path.key_file is None:
        problems.append("unsubscribe: tokens are signed with the return-path key ring; set "
                        "[return_path] key_secret (a Secrets Manager id) or key_file")
    return policy, problems


def _rule(item: Any, path: str, problems: list[str], *,
          local_only: bool) -> UnsubscribeRule | None:
    if not isinstance(item, dict):
        problems.append(f"{path}: expected a table")
        return None
    bad = len(problems)
    for key in item:
        if key not in _KEYS:
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(_KEYS))})")
    raw_from = item.get("from")
    from_domain = raw_from.rstrip(".").lower() if isinstance(raw_from, str) else ""
    if raw_from is None:
        problems.append(f"{path}.from: required: the From domain whose mail gets the headers")
    elif not _HOSTNAME.match(from_domain):
        problems.append(f"{path}.from: expected a domain name, got {raw_from!r}")
    url = item.get("url")
    if url is None:
        problems.append(f"{path}.url: required: the one-click endpoint, "
                        "like https://unsubscribe.example.com/u/")
    else:
        url_problem = check_url(url, local_only=local_only)
        if url_problem:
            problems.append(f"{path}.url: {url_problem}")
    mailto = item.get("mailto")
    if mailto is not None:
        mailto_problem = _check_mailto(mailto)
        if mailto_problem:
            problems.append(f"{path}.mailto: {mailto_problem}")
    tenant = item.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not _TENANT.match(tenant)):
        problems.append(f"{path}.tenant: expected a tenant name, got {tenant!r}")
    add = item.get("add", "when_missing")
    if add not in ADD_MODES:
        problems.append(f"{path}.add: expected one of {', '.join(ADD_MODES)}, got {add!r}")
    if len(problems) > bad:
        return None
    return UnsubscribeRule(from_domain=from_domain, url=str(url), mailto=mailto, tenant=tenant,
                           add=add)


def check_url(url: Any, *, local_only: bool = False) -> str | None:
    """Why `url` cannot be a one-click base URL, or None. A `local_only` policy may
    name http on a loopback address: the local stack's endpoint, never deployed."""
    if not isinstance(url, str) or not url:
        return f"expected an https:// URL, got {url!r}"
    if len(url) > MAX_URL:
        return f"{len(url)} characters; at most {MAX_URL} (the token follows it)"
    if not url.isascii() or any(c in url for c in " <>,\"\\\r\n\t"):
        return f"{url!r}: only URL characters, no spaces, commas or angle brackets"
    parts = urlsplit(url)
    loopback = local_only and parts.scheme == "http" and parts.hostname in _LOOPBACK
    if parts.scheme != "https" and not loopback:
        return (f"{url!r}: one-click unsubscribe must be https (RFC 8058 3.1: receivers "
                "POST to it without user interaction, and drop http URIs)")
    if parts.username is not None or parts.password is not None:
        return f"{url!r}: no user or password in the URL"
    host = (parts.hostname or "").rstrip(".")
    if not _HOSTNAME.match(host) and not loopback:
        return f"{url!r}: expected a host name"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{url!r}: no query or fragment; the token is appended to the path"
    if not _URL_PATH.match(parts.path):
        return f"{url!r}: the path must end with '/' (the token is appended), like /u/"
    return None


def _mailto_received(mailto: str, *, return_path: ReturnPathPolicy,
                     feedback_addresses: Sequence[str]) -> str | None:
    """Why mail to `mailto` would reach no intake, or None."""
    address = mailto.lower()
    domain = address.rpartition("@")[2]
    fbl = {a.lower() for a in feedback_addresses}
    if address in fbl:
        return (f"{mailto} is a [feedback] address, whose mail the FBL intake reads as "
                f"reports; use another one, like unsubscribe@{domain}")
    receiving = {d.bounce_domain for d in return_path.domains} | {
        a.rpartition("@")[2] for a in fbl}
    if domain in receiving:
        return None
    known = ", ".join(sorted(receiving)) or "none in this policy"
    return (f"{domain} is not a domain SES receives for Quiver (a [return_path] bounce "
            f"domain or the domain of a [feedback] address: {known}); requests mailed "
            "there would reach nobody")


def _check_mailto(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected an address like unsubscribe@bounces.example.com, got {value!r}"
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL.match(local) or not _HOSTNAME.match(domain.lower()):
        return f"expected an address like unsubscribe@bounces.example.com, got {value!r}"
    return None
