"""What to trace (a message id or a recipient address) and over which time window."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from quiver.events import rfc3339_ms

# Longest accepted target: an id is at most 128 characters, an address (RFC 5321
# path) at most 256 octets.
MAX_TARGET = 256
# An event record as read back (a JSON line, an Athena row): v1 fields, not checked.
Event = dict[str, Any]


class TraceError(ValueError):
    """A trace that cannot run: bad input, or a store that did not answer."""


@dataclass(frozen=True, slots=True)
class Target:
    """A message id (matched exactly) or a recipient address (matched
    case-insensitively). A value may be both (an id may contain '@'), so a record
    matches on either."""

    value: str
    # Set instead of a value: every `control` event of this actor (the adaptive
    # changes a trace shows beside the recipient's own events).
    actor: str | None = None

    @classmethod
    def changes_by(cls, actor: str) -> Target:
        return cls("", actor=actor)

    @classmethod
    def parse(cls, text: str) -> Target:
        value = text.strip()
        if not value:
            raise TraceError("expected a message id or a recipient address, got nothing")
        if len(value) > MAX_TARGET:
            raise TraceError(f"{value[:40]!r}…: longer than {MAX_TARGET} characters; no "
                             "message id or address is")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise TraceError(f"{value!r}: no message id or address holds spaces or control "
                             "characters")
        return cls(value.removeprefix("<").removesuffix(">") if "@" in value else value)

    @property
    def address(self) -> str | None:
        """The value lowercased, if it could be an address."""
        return self.value.lower() if "@" in self.value else None

    def matches(self, record: Event) -> bool:
        if self.actor is not None:
            return record.get("event") == "control" and record.get("actor") == self.actor
        if record.get("id") == self.value:
            return True
        rcpt = record.get("rcpt")
        return self.address is not None and isinstance(rcpt, str) and rcpt.lower() == self.address

    def needle(self) -> str:
        """Lowercased text every matching JSON line contains (the value as JSON writes
        it), to skip the other lines without parsing them."""
        if self.actor is not None:
            return json.dumps(self.actor, ensure_ascii=False).lower()
        return json.dumps(self.value, ensure_ascii=False)[1:-1].lower()


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end] in epoch seconds; the events' partitions are whole UTC hours."""

    start: float
    end: float

    @classmethod
    def last(cls, seconds: float, *, now: float) -> Window:
        if seconds <= 0:
            raise TraceError("--since must be longer than 0")
        return cls(start=now - seconds, end=now)

    @property
    def start_at(self) -> str:
        return rfc3339_ms(self.start)

    @property
    def end_at(self) -> str:
        return rfc3339_ms(self.end)

    def hours(self) -> list[tuple[str, str]]:
        """Every (date, hour) partition the window touches, oldest first."""
        hour = datetime.fromtimestamp(self.start, tz=UTC).replace(minute=0, second=0,
                                                                   microsecond=0)
        last = datetime.fromtimestamp(self.end, tz=UTC)
        out = []
        while hour <= last:
            out.append((hour.strftime("%Y-%m-%d"), hour.strftime("%H")))
            hour += timedelta(hours=1)
        return out

    def days(self) -> list[tuple[str, str, str]]:
        """(date, first hour, last hour) of every day the window touches, oldest first."""
        out: dict[str, list[str]] = {}
        for date, hour in self.hours():
            out.setdefault(date, []).append(hour)
        return [(date, hours[0], hours[-1]) for date, hours in out.items()]
