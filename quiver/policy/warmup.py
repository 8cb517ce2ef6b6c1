"""The `[warmup]` policy section: which sources are warming up, on which template, from
which day, and the bounds a day must keep to advance.

    [warmup]                       # bounds for every warming source (optional)
    max_bounce_rate = 0.03
    max_deferral_rate = 0.2
    min_attempts = 0

    [warmup.ip7]                   # or, in the source's own table:
    template = "standard"          #   [sources.ip7]
    start = "2026-12-01"           #   warmup = {template = "standard", start = "2026-12-01"}
    max_bounce_rate = 0.02         # this source's bound (optional)
    caps = { gmail = [20, 40, 80] } # this source's caps for a provider (optional)

Templates are named lists of daily caps per provider (quiver/data/warmup_templates.toml).
Restart-only: a sender reads the section at start (the caps it enforces are shared
through the controls table, so senders of two policies would disagree on them).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

DEFAULT_PROVIDER = "default"
BOUND_KEYS = frozenset({"max_bounce_rate", "max_deferral_rate", "min_attempts"})
SOURCE_KEYS = BOUND_KEYS | {"template", "start", "caps"}
# A warm-up longer than a year is a typo, not a plan.
MAX_DAYS = 366
# More than this a day is no cap on a single IP: a list reaching it is a mistake.
MAX_CAP = 100_000_000


@dataclass(frozen=True, slots=True)
class WarmupBounds:
    """What a warming source's previous day must stay within for its day to advance."""

    # Bounces (5xx replies) over attempts. A new IP's bounces are what providers read
    # first; 3 % is about where they start to block a sender with no history.
    max_bounce_rate: float = 0.03
    # Deferrals (4xx replies) over attempts: a provider throttling the IP is saying the
    # volume grew faster than its reputation.
    max_deferral_rate: float = 0.2
    # Fewer attempts than this in a day say nothing about the IP: the day holds. 0
    # lets a quiet day advance (the ramp follows the calendar when little is sent).
    min_attempts: int = 0


@dataclass(frozen=True, slots=True)
class SourceWarmup:
    source: str
    template: str
    start: dt.date
    # Daily caps (day 1 first) per provider name or "default".
    caps: Mapping[str, tuple[int, ...]]
    bounds: WarmupBounds = field(default_factory=WarmupBounds)

    @property
    def days(self) -> int:
        """The warm-up's length: after this day no provider is capped."""
        return max((len(c) for c in self.caps.values()), default=0)

    def cap(self, provider: str | None, day: int) -> int | None:
        """Recipients this source may take for `provider` on warm-up day `day` (1-based);
        None: no cap (past its list, or no list applies)."""
        caps = self.caps.get(provider or DEFAULT_PROVIDER)
        if caps is None:
            caps = self.caps.get(DEFAULT_PROVIDER)
        if caps is None or day > len(caps):
            return None
        return caps[max(day, 1) - 1]


@dataclass(frozen=True, slots=True)
class WarmupPolicy:
    sources: Mapping[str, SourceWarmup] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.sources)


Templates = Mapping[str, Mapping[str, tuple[int, ...]]]
Error = Callable[[str, str], None]


@cache
def templates() -> Templates:
    """The shipped templates (quiver/data/warmup_templates.toml)."""
    text = resources.files("quiver").joinpath("data/warmup_templates.toml").read_text("utf-8")
    problems: list[str] = []
    out = parse_templates(tomllib.loads(text),
                          error=lambda path, msg: problems.append(f"{path}: {msg}"))
    if problems:  # a packaging mistake: the shipped file is tested
        raise ValueError("warmup_templates.toml: " + "; ".join(problems))
    return out


def parse_templates(data: Mapping[str, Any], *, error: Error) -> Templates:
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            error(name, "expected a table of provider = [daily caps]")
            continue
        out[name] = _caps_table(table, path=name, error=error)
        if DEFAULT_PROVIDER not in out[name]:
            error(f"{name}.{DEFAULT_PROVIDER}", "required: the caps for other providers")
    return out


def _caps_table(table: Mapping[str, Any], *, path: str, error: Error) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for provider, caps in table.items():
        where = f"{path}.{provider}"
        if (not isinstance(caps, list) or not caps or len(caps) > MAX_DAYS
                or not all(_is_cap(c) for c in caps)):
            error(where, f"expected a list of 1-{MAX_DAYS} daily caps (whole numbers "
                         f"1-{MAX_CAP:,}), got {caps!r}")
            continue
        out[provider] = tuple(caps)
    return out


def _is_cap(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CAP


def parse_warmup(
    section: Mapping[str, Any], source_tables: Mapping[str, Any], *, providers: Mapping[str, Any],
    error: Error, known: Templates | None = None,
) -> WarmupPolicy:
    """The section from the `[warmup]` table and the sources' `warmup` keys; each
    problem goes to `error(path, message)`. `providers` are the policy's provider
    names (a source's `caps` may only name those, or "default")."""
    known = templates() if known is None else known
    defaults = _bounds(section, path="warmup", base=WarmupBounds(), error=error)
    plans: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for key, value in section.items():
        if key in BOUND_KEYS:
            continue
        if not isinstance(value, dict):
            error(f"warmup.{key}", "unknown key (allowed: " + ", ".join(sorted(BOUND_KEYS))
                  + ", or a table per warming source)")
            continue
        plans[key] = (f"warmup.{key}", value)
    for name, table in source_tables.items():
        if not isinstance(table, dict) or "warmup" not in table:
            continue
        path = f"sources.{name}.warmup"
        if name in plans:
            error(path, f"set in [warmup.{name}] as well: keep one")
            continue
        if not isinstance(table["warmup"], dict):
            error(path, "expected a table like {template = \"standard\", start = \"2026-12-01\"}")
            continue
        plans[name] = (path, table["warmup"])
    out: dict[str, SourceWarmup] = {}
    for name, (path, plan) in plans.items():
        if name not in source_tables:
            error(path, f"unknown source {name!r}")
            continue
        parsed = _source(name, plan, path=path, defaults=defaults, providers=providers,
                         known=known, error=error)
        if parsed is not None:
            out[name] = parsed
    return WarmupPolicy(sources=out)


def _source(name: str, plan: Mapping[str, Any], *, path: str, defaults: WarmupBounds,
            providers: Mapping[str, Any], known: Templates, error: Error) -> SourceWarmup | None:
    ok = True
    for key in plan:
        if key not in SOURCE_KEYS:
            error(f"{path}.{key}", "unknown key (allowed: " + ", ".join(sorted(SOURCE_KEYS)) + ")")
            ok = False
    template = plan.get("template")
    if not isinstance(template, str) or template not in known:
        error(f"{path}.template", f"expected one of {', '.join(sorted(known))}, got {template!r}")
        ok = False
    start = _date(plan.get("start"))
    if start is None:
        error(f"{path}.start", f"expected the warm-up's first day as \"YYYY-MM-DD\", got "
                               f"{plan.get('start')!r}")
        ok = False
    caps: dict[str, tuple[int, ...]] = {}
    raw_caps = plan.get("caps", {})
    if not isinstance(raw_caps, dict):
        error(f"{path}.caps", "expected a table of provider = [daily caps]")
        ok = False
    else:
        for provider in raw_caps:
            if provider != DEFAULT_PROVIDER and provider not in providers:
                error(f"{path}.caps.{provider}", f"unknown provider {provider!r} (name one "
                                                 f"of [providers], or {DEFAULT_PROVIDER!r})")
                ok = False
        caps = _caps_table(raw_caps, path=f"{path}.caps", error=error)
        ok = ok and len(caps) == len(raw_caps)
    bounds = _bounds(plan, path=path, base=defaults, error=error)
    if not ok or start is None or not isinstance(template, str):
        return None
    return SourceWarmup(source=name, template=template, start=start,
                        caps={**known[template], **caps}, bounds=bounds)


def _date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return None  # a time of day says the wrong thing: days are UTC calendar days
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value) if len(value) == 10 else None
        except ValueError:
            return None
    return None


def _bounds(t: Mapping[str, Any], *, path: str, base: WarmupBounds, error: Error) -> WarmupBounds:
    def rate(key: str, default: float) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            error(f"{path}.{key}", f"expected a fraction 0-1 (0.05 is 5 %), got {value!r}")
            return default
        return float(value)

    attempts = t.get("min_attempts", base.min_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        error(f"{path}.min_attempts", f"expected a whole number >= 0, got {attempts!r}")
        attempts = base.min_attempts
    return WarmupBounds(max_bounce_rate=rate("max_bounce_rate", base.max_bounce_rate),
                        max_deferral_rate=rate("max_deferral_rate", base.max_deferral_rate),
                        min_attempts=attempts)
