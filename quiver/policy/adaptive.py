"""The `[adaptive]` policy section: response rules and the AIMD send rates they drive.

    [adaptive]
    enabled = true        # false: replies are not watched, rates stay static
    floor = "1/s"         # a reduce never takes a (source, provider) below this
    step = "1/s"          # added after each quiet window, up to the throttle's max_rate
    quiet = "60s"         # a window without a throttle reply before each raise
    factor = 0.7          # a reduce rule's factor when it names none
    starter = true        # also use quiver/data/response_rules.toml (after these rules)

    [[adaptive.rules]]
    name = "gmail-rate-limited"
    provider = "google"   # a provider of [providers], or "*" for every destination
    code = 421            # any of code, enhanced (a prefix: "4.7." matches 4.7.28), text
    enhanced = "4.7.28"   #   (a case-insensitive regex searched in the reply text);
    text = "rate limited" #   every one given must match
    window = "60s"        # required: the window the threshold is measured over
    threshold = 0.05      # share of the window's attempts; absent: any match acts
    min_attempts = 20     # attempts the window needs before a threshold is judged
    action = "reduce"     # reduce | suspend | suspend_tenant | suspend_campaign
    factor = 0.5          # reduce: new rate = max(floor, rate * factor)
    duration = "1h"       # suspend*: how long the pause lasts
    recovery = "step"     # see RECOVERIES

A reply is matched against the rules of its provider in order, then the `*` rules;
the first that matches is the one counted. A policy rule named as a starter rule
replaces it. Live: a reload applies new rules to the next reply.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal, get_args

from quiver.units import parse_duration, parse_rate

Action = Literal["reduce", "suspend", "suspend_tenant", "suspend_campaign"]
ACTIONS: tuple[Action, ...] = get_args(Action)
# How what a rule did is undone:
# - reduce "step": after each quiet window the rate climbs by `step` (AIMD);
# - reduce "reset": after one quiet window the rate goes back to the static max;
# - suspend* "expire": the pause lifts at its end, the rate is what it was;
# - suspend "floor": the pause lifts at its end and the (source, provider) starts
#   again at the floor, climbing by `step` (a provider that blocked us is not met
#   with the full rate the moment the block ends).
Recovery = Literal["step", "reset", "expire", "floor"]
RECOVERIES: dict[Action, tuple[Recovery, ...]] = {
    "reduce": ("step", "reset"), "suspend": ("expire", "floor"),
    "suspend_tenant": ("expire",), "suspend_campaign": ("expire",),
}
ANY_PROVIDER: Final = "*"
SECTION_KEYS = frozenset({"enabled", "floor", "step", "quiet", "factor", "starter", "rules"})
RULE_KEYS = frozenset({"name", "provider", "code", "enhanced", "text", "window", "threshold",
                       "min_attempts", "action", "factor", "duration", "recovery"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENHANCED = re.compile(r"^[245](\.\d{1,3}){0,2}\.?$")
# Windows are counted in memory per (rule, source, provider): bounded so a typo of
# "60d" does not keep days of counts; a reply storm is judged within the hour.
MIN_WINDOW, MAX_WINDOW = 1.0, 3600.0
# An adaptive pause is the engine's guess: it lapses within a week even if nobody
# looks; an operator who wants longer pauses by hand.
MIN_DURATION, MAX_DURATION = 1.0, 7 * 86400.0
MIN_QUIET, MAX_QUIET = 1.0, 3600.0
MAX_TEXT = 500
MAX_RULES = 500
# With a threshold and no min_attempts, a window of a few attempts would act on one
# unlucky reply: this many attempts are needed before a share is judged.
DEFAULT_MIN_ATTEMPTS = 10
DEFAULT_FACTOR = 0.7


@dataclass(frozen=True, slots=True)
class ResponseRule:
    name: str
    provider: str  # a provider name, or ANY_PROVIDER
    action: Action
    window: float
    code: int | None = None
    enhanced: str | None = None  # a prefix of the reply's enhanced status
    text: re.Pattern[str] | None = None
    threshold: float | None = None  # None: any match acts
    min_attempts: int = 1
    factor: float | None = None  # reduce; None: the section's factor
    duration: float | None = None  # suspend*
    recovery: Recovery = "step"

    def matches(self, code: int, enhanced: str | None, text: str) -> bool:
        if self.code is not None and code != self.code:
            return False
        if self.enhanced is not None and (
                enhanced is None or not (enhanced + ".").startswith(self.enhanced)):
            return False
        return self.text is None or self.text.search(text) is not None

    def describe(self) -> str:
        what = " ".join(p for p in (
            str(self.code) if self.code is not None else "",
            self.enhanced or "", f"/{self.text.pattern}/" if self.text else "") if p)
        share = "any match" if self.threshold is None else \
            f">= {self.threshold:.1%} of >= {self.min_attempts} attempts"
        return (f"{self.name} ({self.provider}): {what} in {self.window:g}s, {share} -> "
                f"{self.action}")


@dataclass(frozen=True, slots=True)
class AdaptivePolicy:
    enabled: bool = True
    floor: float = 1.0  # messages per second
    step: float = 1.0  # messages per second
    quiet: float = 60.0
    factor: float = DEFAULT_FACTOR
    rules: tuple[ResponseRule, ...] = ()
    # Each provider's rules then the `*` rules, in order (built from `rules`).
    by_provider: Mapping[str, tuple[ResponseRule, ...]] = field(
        default_factory=dict, compare=False, repr=False)

    def rules_for(self, provider: str | None) -> tuple[ResponseRule, ...]:
        found = self.by_provider.get(provider or ANY_PROVIDER)
        return found if found is not None else self.by_provider.get(ANY_PROVIDER, ())


def _index(rules: tuple[ResponseRule, ...]) -> dict[str, tuple[ResponseRule, ...]]:
    common = tuple(r for r in rules if r.provider == ANY_PROVIDER)
    named = {r.provider for r in rules if r.provider != ANY_PROVIDER}
    out = {p: tuple(r for r in rules if r.provider == p) + common for p in named}
    out[ANY_PROVIDER] = common
    return out


def adaptive_section(raw: Any, *, providers: Collection[str],
                     starter: bool = True) -> tuple[AdaptivePolicy, list[str]]:
    """The section as a typed policy, and every problem as `path: why` (the default
    policy when there are problems: the caller refuses the file). `starter=False`
    leaves the starter file out whatever the section says (tests)."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return AdaptivePolicy(), [f"adaptive: expected a table, got {type(raw).__name__}"]
    for key in raw:
        if key not in SECTION_KEYS:
            problems.append(f"adaptive.{key}: unknown key (allowed: "
                            f"{', '.join(sorted(SECTION_KEYS))})")
    d = AdaptivePolicy()
    enabled = _bool(raw, "enabled", d.enabled, problems)
    use_starter = _bool(raw, "starter", True, problems) and starter
    floor = _rate(raw, "floor", d.floor, problems)
    step = _rate(raw, "step", d.step, problems)
    quiet = _duration(raw, "quiet", "adaptive", d.quiet, MIN_QUIET, MAX_QUIET, problems)
    factor = _factor(raw.get("factor", d.factor), "adaptive.factor", problems)
    rules_raw = raw.get("rules", [])
    rules: list[ResponseRule] = []
    if not isinstance(rules_raw, list):
        problems.append("adaptive.rules: expected an array of tables ([[adaptive.rules]])")
    elif len(rules_raw) > MAX_RULES:
        problems.append(f"adaptive.rules: at most {MAX_RULES} rules")
    else:
        seen: set[str] = set()
        for i, item in enumerate(rules_raw):
            rule = parse_rule(item, f"adaptive.rules[{i}]", problems, providers=providers)
            if rule is None:
                continue
            if rule.name in seen:
                problems.append(f"adaptive.rules[{i}].name: {rule.name!r} is used twice")
                continue
            seen.add(rule.name)
            rules.append(rule)
    if use_starter:
        names = {r.name for r in rules}
        # A starter rule for a provider this policy does not define can never match.
        rules.extend(r for r in starter_rules()
                     if r.name not in names
                     and (r.provider == ANY_PROVIDER or r.provider in providers))
    if problems:
        return AdaptivePolicy(), problems
    frozen = tuple(rules)
    return AdaptivePolicy(enabled=enabled, floor=floor, step=step, quiet=quiet, factor=factor,
                          rules=frozen, by_provider=_index(frozen)), problems


def parse_rule(item: Any, path: str, problems: list[str], *,
               providers: Collection[str] | None) -> ResponseRule | None:
    """One rule; None (with its problems added) when it cannot be used. `providers`
    None: any provider name is taken (the starter file names providers a policy may
    not define)."""
    if not isinstance(item, dict):
        problems.append(f"{path}: expected a table with name, window and action")
        return None
    before = len(problems)
    for key in item:
        if key not in RULE_KEYS:
            problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{path}.name: required, 1-64 of [a-z0-9._-] starting with a letter "
                        f"or digit, got {name!r}")
        name = "?"
    else:
        path = f"{path} ({name})"
    provider = item.get("provider", ANY_PROVIDER)
    if provider == "default":
        provider = ANY_PROVIDER
    if not isinstance(provider, str) or (
            providers is not None and provider != ANY_PROVIDER and provider not in providers):
        known = ", ".join(sorted(providers)) if providers else "none defined"
        problems.append(f"{path}.provider: {provider!r} is not a provider of [providers] "
                        f"({known}); or \"*\" for every destination")
        provider = ANY_PROVIDER
    code = item.get("code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)
                             or not 400 <= code <= 599):
        problems.append(f"{path}.code: expected a failure reply code 400-599 (rules match "
                        f"refusals), got {code!r}")
    enhanced = item.get("enhanced")
    if enhanced is not None and (not isinstance(enhanced, str) or not _ENHANCED.match(enhanced)):
        problems.append(f"{path}.enhanced: expected an enhanced status or its prefix like "
                        f"\"4.7.28\" or \"5.7.\", got {enhanced!r}")
    text = _regex(item.get("text"), f"{path}.text", problems)
    if code is None and enhanced is None and text is None:
        problems.append(f"{path}: matches every reply; give code, enhanced or text")
    window = _duration(item, "window", path, None, MIN_WINDOW, MAX_WINDOW, problems,
                       required=True)
    threshold = item.get("threshold")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, int | float)
                                  or not 0 < threshold <= 1):
        problems.append(f"{path}.threshold: expected a share of attempts in (0, 1] like "
                        f"0.05; leave it out for \"any match\"; got {threshold!r}")
    min_attempts = item.get("min_attempts", DEFAULT_MIN_ATTEMPTS if threshold is not None else 1)
    if isinstance(min_attempts, bool) or not isinstance(min_attempts, int) \
            or not 1 <= min_attempts <= 100_000:
        problems.append(f"{path}.min_attempts: expected an integer 1-100000, got {min_attempts!r}")
    action = item.get("action")
    if action not in ACTIONS:
        problems.append(f"{path}.action: required, one of {', '.join(ACTIONS)}; got {action!r}")
        action = None
    factor: float | None = None
    duration: float | None = None
    recovery = item.get("recovery")
    if action is not None:
        allowed = RECOVERIES[action]
        if recovery is None:
            recovery = allowed[0]
        elif recovery not in allowed:
            problems.append(f"{path}.recovery: for {action}, one of {', '.join(allowed)}; "
                            f"got {recovery!r}")
        if action == "reduce":
            if "duration" in item:
                problems.append(f"{path}.duration: only for suspend actions (a reduce lasts "
                                "until quiet windows raise the rate again)")
            if "factor" in item:
                factor = _factor(item["factor"], f"{path}.factor", problems)
        else:
            if "factor" in item:
                problems.append(f"{path}.factor: only for reduce")
            duration = _duration(item, "duration", path, None, MIN_DURATION, MAX_DURATION,
                                 problems, required=True)
    if len(problems) > before or action is None or window is None or recovery is None:
        return None
    return ResponseRule(
        name=name, provider=provider, action=action, window=window, code=code,
        enhanced=enhanced.rstrip(".") + "." if enhanced else None, text=text,
        threshold=float(threshold) if threshold is not None else None,
        min_attempts=min_attempts, factor=factor, duration=duration, recovery=recovery)


@functools.cache
def starter_rules() -> tuple[ResponseRule, ...]:
    """The rules of quiver/data/response_rules.toml (a broken file is a build error:
    tests load it)."""
    text = resources.files("quiver").joinpath("data/response_rules.toml").read_text("utf-8")
    data = tomllib.loads(text)
    problems: list[str] = []
    rules = [parse_rule(item, f"response_rules.toml rules[{i}]", problems, providers=None)
             for i, item in enumerate(data.get("rules", []))]
    if problems:
        raise ValueError("quiver/data/response_rules.toml: " + "; ".join(problems))
    return tuple(r for r in rules if r is not None)


def _bool(raw: Mapping[str, Any], key: str, default: bool, problems: list[str]) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"adaptive.{key}: expected true or false, got {value!r}")
        return default
    return value


def _rate(raw: Mapping[str, Any], key: str, default: float, problems: list[str]) -> float:
    """A rate as "2/s" or "120/m", or a number of messages per second."""
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and 0 < value <= 1_000_000:
            return float(value)
    else:
        try:
            return parse_rate(value).per_second
        except ValueError:
            pass
    problems.append(f"adaptive.{key}: expected a rate like \"2/s\" or a positive number of "
                    f"messages per second, got {value!r}")
    return default


def _factor(value: Any, path: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        problems.append(f"{path}: expected a number between 0 and 1 (exclusive) like 0.5, "
                        f"got {value!r}")
        return DEFAULT_FACTOR
    return float(value)


def _duration(raw: Mapping[str, Any], key: str, path: str, default: float | None,
              low: float, high: float, problems: list[str], *,
              required: bool = False) -> Any:
    if key not in raw:
        if required:
            problems.append(f"{path}.{key}: required, a duration like \"60s\"")
        return default
    try:
        value = parse_duration(raw[key])
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}.{key}: {exc}")
        return default
    if not low <= value <= high:
        problems.append(f"{path}.{key}: must be between {low:g}s and {high:g}s")
        return default
    return value


def _regex(value: Any, path: str, problems: list[str]) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        problems.append(f"{path}: expected a regular expression of 1-{MAX_TEXT} characters, "
                        f"got {value!r}")
        return None
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        problems.append(f"{path}: not a valid regular expression: {exc}")
        return None
