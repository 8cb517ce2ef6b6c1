"""What an operator control is: a kind, a selector, who asked, why, and until when.

A selector names any of the fields below; mail matches when it matches every field
named (an AND). Domains compare lower-cased and exactly (a pause of example.com
does not hold mail for sub.example.com). Pool, tenant and campaign are known when
a message is received; source and provider only once a recipient is routed, so a
selector naming them is applied in the scheduler, before a connection or a
transaction starts, and an admin bounce may not name them (where a message goes
is chosen per attempt: pause that source or provider instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

Kind = Literal["pause", "bounce", "stop"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# The selector's fields, in the order they are shown.
FIELDS = ("pool", "source", "provider", "domain", "tenant", "campaign")
# Known only after routing: a bounce cannot name them.
ROUTED_FIELDS = frozenset({"source", "provider"})
# As the envelope's labels (pool, tenant, campaign) and policy names allow.
_VALUE = re.compile(r"^[A-Za-z0-9._:@/+*-]{1,128}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*"
                     r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_ID = re.compile(r"^[a-z0-9-]{1,64}$")
MAX_REASON = 500
MAX_WHO = 256


class ControlError(ValueError):
    """A control that cannot be stored or applied, with what is wrong."""


@dataclass(frozen=True, slots=True)
class Selector:
    pool: str | None = None
    source: str | None = None
    provider: str | None = None
    domain: str | None = None
    tenant: str | None = None
    campaign: str | None = None

    @classmethod
    def of(cls, values: dict[str, str | None]) -> Selector:
        """A validated selector from field values (None or absent: not named)."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ControlError(f"unknown selector field(s): {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(FIELDS)})")
        out: dict[str, str] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name == "domain":
                value = value.strip().lower().rstrip(".")
                if not _DOMAIN.match(value):
                    raise ControlError(f"--domain {value!r}: not a domain name")
            elif not _VALUE.match(value):
                raise ControlError(f"--{name} {value!r}: expected 1-128 characters of "
                                   "[A-Za-z0-9._:@/+*-]")
            out[name] = value
        return cls(**out)

    def named(self) -> dict[str, str]:
        """The fields this selector names, in FIELDS order."""
        return {f: v for f in FIELDS if (v := getattr(self, f)) is not None}

    @property
    def empty(self) -> bool:
        return not self.named()

    @property
    def routed(self) -> bool:
        """Names a field known only after routing (source, provider)."""
        return any(f in ROUTED_FIELDS for f in self.named())

    def matches(self, values: dict[str, str | None]) -> bool:
        """Every named field equals the value given for it (a field not given, or None,
        cannot match)."""
        for name, want in self.named().items():
            have = values.get(name)
            if have is None or (have.lower() != want if name == "domain" else have != want):
                return False
        return True

    def describe(self) -> str:
        named = self.named()
        return " ".join(f"{k}={v}" for k, v in named.items()) if named else "everything"


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    kind: Kind
    selector: Selector
    reason: str
    who: str  # the caller's identity: an IAM ARN, or user@host
    created_at: float  # epoch seconds
    expires_at: float | None = None  # epoch seconds; None: until lifted

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ControlError(f"control id {self.id!r}: expected 1-64 of [a-z0-9-]")
        if self.kind not in KINDS:
            raise ControlError(f"kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "stop" and not self.selector.empty:
            raise ControlError("a stop names no selector: it stops everything")
        if self.kind != "stop" and self.selector.empty:
            raise ControlError(f"a {self.kind} needs a selector (--pool, --source, --provider, "
                               "--domain, --tenant or --campaign); to halt all sending use "
                               "`quiver ctl stop`")
        if self.kind == "bounce" and self.selector.routed:
            raise ControlError("a bounce cannot name --source or --provider (where mail goes "
                               "is chosen at each attempt): pause them instead")
        if len(self.reason) > MAX_REASON or any(c in self.reason for c in "\r\n\0"):
            raise ControlError(f"reason: at most {MAX_REASON} characters, one line")
        if not self.who or len(self.who) > MAX_WHO:
            raise ControlError(f"who: 1-{MAX_WHO} characters")
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ControlError("expires_at must be after created_at")

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def describe(self) -> str:
        """One line naming it, for reasons and logs: `control <id> (pause domain=x by who)`."""
        return f"control {self.id} ({self.kind} {self.selector.describe()} by {self.who})"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`quiver ctl list --json`)."""
        return {
            "id": self.id, "kind": self.kind, "selector": self.selector.named(),
            "reason": self.reason, "who": self.who, "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

