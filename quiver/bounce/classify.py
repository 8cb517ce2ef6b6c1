"""A rules-file driven bounce classifier (rules: quiver/data/bounce_rules.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from quiver.events import Bounce

KINDS = ("hard", "soft", "block", "undetermined")


class RulesError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Classification:
    kind: str
    category: str
    reason: str

    def as_event(self) -> Bounce:
        return {"kind": self.kind, "category": self.category, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    category: str
    codes: frozenset[int]
    enhanced: tuple[str, ...]
    text: re.Pattern[str] | None

    def matches(self, code: int, enhanced: str | None, text: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        if self.enhanced and not (
            enhanced and any(enhanced == e or (e.endswith(".") and enhanced.startswith(e))
                             for e in self.enhanced)
        ):
            return False
        return not (self.text and not self.text.search(text))


class Classifier:
    def __init__(self, rules_toml: str) -> None:
        try:
            data = tomllib.loads(rules_toml)
        except tomllib.TOMLDecodeError as exc:
            raise RulesError(f"bounce rules: not valid TOML: {exc}") from None
        self._rules = tuple(_rule(i, r) for i, r in enumerate(data.get("rules", [])))

    def classify(self, *, code: int, enhanced: str | None, text: str) -> Classification:
        reason = f"{code} {enhanced + ' ' if enhanced else ''}{text}".strip()
        for rule in self._rules:
            if rule.matches(code, enhanced, text):
                return Classification(rule.kind, rule.category, reason)
        return Classification("undetermined", "other", reason)


def _rule(i: int, raw: Any) -> _Rule:
    where = f"bounce rules[{i}]"
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RulesError(f"{where}.kind: expected one of {', '.join(KINDS)}")
    text = raw.get("text")
    try:
        pattern = re.compile(text, re.IGNORECASE) if text else None
    except re.error as exc:
        raise RulesError(f"{where}.text: bad regex: {exc}") from None
    return _Rule(
        kind=kind,
        category=str(raw.get("category", "other")),
        codes=frozenset(int(c) for c in raw.get("codes", [])),
        enhanced=tuple(str(e) for e in raw.get("enhanced", [])),
        text=pattern,
    )


@cache
def default_classifier() -> Classifier:
    text = resources.files("quiver").joinpath("data/bounce_rules.toml").read_text("utf-8")
    return Classifier(text)
