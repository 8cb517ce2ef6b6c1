"""The `[feedback]` policy section: which feedback reports may suppress recipients.

    [feedback]
    # Feedback types that suppress the complainer when the report is trusted.
    act_on = ["abuse", "fraud"]
    # Our own domains: a report whose Reported-Domain names none of them is about
    # someone else's mail and only kept. Empty: any Reported-Domain.
    own_domains = ["example.com"]
    # Where reporters send: each address gets an SES receipt rule (cdk/inbound_mail.py)
    # storing its mail for the FBL intake. Its domain's MX must be SES inbound.
    addresses = ["fbl@fbl.example.com"]
    trusted_reporters = [
      { domain = "yahoo.com" },                       # require_dkim defaults to true
      { domain = "hotmail.com", require_dkim = false, user_agents = ["Hotmail FBL"] },
    ]

A reporter is trusted when the report carries a verified DKIM signature whose d=
is the entry's domain or under it. An entry with `require_dkim = false` also
trusts a report without one when its envelope sender's domain is the entry's
domain or under it (and, if `user_agents` is given, its User-Agent starts with
one of them). The envelope sender is as easy to forge as a User-Agent: that is
the trade such an entry makes, for reporters that do not sign. An untrusted
report is counted and kept; it suppresses nobody.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

from quiver.feedback.report import FEEDBACK_TYPES, FeedbackType

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_ENTRY_KEYS = ("domain", "require_dkim", "user_agents")
_SECTION_KEYS = ("act_on", "addresses", "own_domains", "trusted_reporters")
_LOCAL_PART = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
# A not-spam or auth-failure report is not a complaint about unwanted mail.
DEFAULT_ACT_ON: tuple[FeedbackType, ...] = ("abuse", "fraud")


@dataclass(frozen=True, slots=True)
class TrustedReporter:
    domain: str
    require_dkim: bool = True
    user_agents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    trusted_reporters: tuple[TrustedReporter, ...] = ()
    act_on: tuple[FeedbackType, ...] = DEFAULT_ACT_ON
    own_domains: tuple[str, ...] = ()
    # The FBL addresses (lower case) SES receives reports at; empty: none received.
    addresses: tuple[str, ...] = ()


def feedback_section(raw: Any, *, path: str = "feedback") -> tuple[FeedbackPolicy, list[str]]:
    """The section as a typed policy, and every problem as `path: why` (the policy
    is the default one when there are problems; the caller refuses the file)."""
    problems: list[str] = []
    if raw is None:
        return FeedbackPolicy(), problems
    if not isinstance(raw, dict):
        return FeedbackPolicy(), [f"{path}: expected a table, got {type(raw).__name__}"]
    for key in raw:
        if key not in _SECTION_KEYS:
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(_SECTION_KEYS)})")
    act_on = _act_on(raw.get("act_on", list(DEFAULT_ACT_ON)), f"{path}.act_on", problems)
    own = _domains(raw.get("own_domains", []), f"{path}.own_domains", problems)
    addresses = _addresses(raw.get("addresses", []), f"{path}.addresses", problems)
    reporters = raw.get("trusted_reporters", [])
    entries: list[TrustedReporter] = []
    if not isinstance(reporters, list):
        problems.append(f"{path}.trusted_reporters: expected an array of tables, like "
                        '[{ domain = "yahoo.com" }]')
    else:
        seen: set[str] = set()
        for i, item in enumerate(reporters):
            entry = _entry(item, f"{path}.trusted_reporters[{i}]", problems)
            if entry is None:
                continue
            if entry.domain in seen:
                problems.append(f"{path}.trusted_reporters[{i}].domain: {entry.domain} is "
                                "listed twice; keep one entry per domain")
            seen.add(entry.domain)
            entries.append(entry)
    if problems:
        return FeedbackPolicy(), problems
    return FeedbackPolicy(tuple(entries), act_on, own, addresses), problems


def _entry(item: Any, path: str, problems: list[str]) -> TrustedReporter | None:
    if not isinstance(item, dict):
        problems.append(f"{path}: expected a table, like {{ domain = \"yahoo.com\" }}")
        return None
    before = len(problems)
    for key in item:
        if key not in _ENTRY_KEYS:
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(_ENTRY_KEYS)})")
    domain = _domain(item.get("domain"), f"{path}.domain", problems)
    require_dkim = item.get("require_dkim", True)
    if not isinstance(require_dkim, bool):
        problems.append(f"{path}.require_dkim: expected true or false, got {require_dkim!r}")
    agents = item.get("user_agents", [])
    if not isinstance(agents, list) or not all(isinstance(a, str) and a.strip() for a in agents):
        problems.append(f"{path}.user_agents: expected a list of non-empty strings, "
                        f"got {agents!r}")
    elif agents and require_dkim is True:
        problems.append(f"{path}.user_agents: only read when require_dkim = false (a "
                        "verified signature already names the reporter); remove it or "
                        "set require_dkim = false")
    if len(problems) > before or domain is None:
        return None
    return TrustedReporter(domain, require_dkim, tuple(a.strip() for a in agents))


def _domain(value: Any, path: str, problems: list[str]) -> str | None:
    if not isinstance(value, str):
        problems.append(f"{path}: required, a domain name like \"yahoo.com\"")
        return None
    domain = value.strip().rstrip(".").lower()
    if not _DOMAIN.match(domain):
        problems.append(f"{path}: expected a domain name with a dot, like \"yahoo.com\", "
                        f"got {value!r}")
        return None
    return domain


def _domains(value: Any, path: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list of domain names, got {value!r}")
        return ()
    found = [_domain(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return tuple(d for d in found if d is not None)


def _addresses(value: Any, path: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list of addresses, like [\"fbl@fbl.example.com\"]")
        return ()
    out: list[str] = []
    for i, item in enumerate(value):
        local, at, domain = item.strip().lower().rpartition("@") if isinstance(
            item, str) else ("", "", "")
        if not at or not _LOCAL_PART.match(local) or not _DOMAIN.match(domain.rstrip(".")):
            problems.append(f"{path}[{i}]: expected an address like fbl@fbl.example.com, "
                            f"got {item!r}")
            continue
        address = f"{local}@{domain.rstrip('.')}"
        if address in out:
            problems.append(f"{path}[{i}]: {address} is listed twice")
            continue
        out.append(address)
    return tuple(out)


def _act_on(value: Any, path: str, problems: list[str]) -> tuple[FeedbackType, ...]:
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: expected a non-empty list of feedback types "
                        f"({', '.join(FEEDBACK_TYPES)})")
        return DEFAULT_ACT_ON
    kinds: list[FeedbackType] = []
    for i, item in enumerate(value):
        if item not in FEEDBACK_TYPES:
            problems.append(f"{path}[{i}]: unknown feedback type {item!r} (one of "
                            f"{', '.join(FEEDBACK_TYPES)})")
        elif item not in kinds:
            kinds.append(cast(FeedbackType, item))
    return tuple(kinds)
