"""Provider grouping: MX host patterns → provider name (google, microsoft, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase


def pattern_matches(pattern: str, name: str) -> bool:
    """`*.google.com` matches `aspmx.l.google.com`; a pattern without `*` matches exactly."""
    return fnmatchcase(name, pattern)


class ProviderMatcher:
    def __init__(self, providers: Mapping[str, Iterable[str]]) -> None:
        self._rules = [(name, tuple(p.lower() for p in patterns))
                       for name, patterns in providers.items()]

    def match(self, mx_hosts: Iterable[str]) -> str | None:
        """The first provider (in policy order) any of whose patterns matches an MX host."""
        hosts = [h.lower() for h in mx_hosts]
        for name, patterns in self._rules:
            if any(pattern_matches(p, h) for p in patterns for h in hosts):
                return name
        return None
