"""Folding a batch of events into counts per (tenant or campaign, time bucket).

What counts (the rates' terms):
- an attempt: a `delivered` or `bounced` final event, a recipient whose mail reached
  a receiving MX's verdict (suppressed, rejected or expired mail never left, and
  `deferred` repeats per try, so neither is in the denominator);
- a hard bounce: a `bounced` or `async_bounce` event whose bounce kind is `hard`;
- a complaint: a `complaint` event of the feedback loop whose feedback type says the
  recipient objected (abuse, fraud, other, or none given); `not-spam`, `virus` and
  `auth-failure` reports are not a recipient's complaint.

Each record counts in the bucket of its own `at` (a complaint arriving today counts
today, whenever its message went out), under its tenant and under its campaign.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from quiver.events import Record

Scope = Literal["tenant", "campaign"]
SCOPES: Final[tuple[Scope, ...]] = ("tenant", "campaign")
ATTEMPT_EVENTS: Final = frozenset({"delivered", "bounced"})
HARD_BOUNCE_EVENTS: Final = frozenset({"bounced", "async_bounce"})
NOT_COMPLAINTS: Final = frozenset({"not-spam", "virus", "auth-failure"})


@dataclass(frozen=True, slots=True)
class Counts:
    attempts: int = 0
    hard_bounces: int = 0
    complaints: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.attempts + other.attempts,
                      self.hard_bounces + other.hard_bounces,
                      self.complaints + other.complaints)

    @property
    def empty(self) -> bool:
        return not (self.attempts or self.hard_bounces or self.complaints)


# (scope, tenant or campaign name, bucket start in epoch seconds)
CountKey = tuple[Scope, str, int]


def record_counts(record: Mapping[str, object]) -> Counts:
    """What one record adds to its tenant's and campaign's counts (often nothing)."""
    event = record.get("event")
    bounce = record.get("bounce")
    hard = (event in HARD_BOUNCE_EVENTS and isinstance(bounce, Mapping)
            and bounce.get("kind") == "hard")
    complaint = event == "complaint" and record.get("feedback_type") not in NOT_COMPLAINTS
    return Counts(attempts=int(event in ATTEMPT_EVENTS), hard_bounces=int(hard),
                  complaints=int(complaint))


def bucket_of(epoch: float, bucket_seconds: int) -> int:
    return int(epoch // bucket_seconds) * bucket_seconds


def epoch_of(at: str) -> float:
    """A record's `at` (RFC 3339 UTC) in epoch seconds; ValueError if it is not one."""
    return datetime.fromisoformat(at).timestamp()


def fold(records: Iterable[Record], *, bucket_seconds: int) -> dict[CountKey, Counts]:
    """The counts of a batch, per (scope, name, bucket); records that count for
    nothing, or name no tenant or campaign, or carry no readable `at`, add nothing."""
    out: dict[CountKey, Counts] = {}
    for record in records:
        counts = record_counts(record)
        if counts.empty:
            continue
        try:
            bucket = bucket_of(epoch_of(str(record.get("at"))), bucket_seconds)
        except ValueError:
            continue
        for scope in SCOPES:
            name = record.get(scope)
            if isinstance(name, str) and name:
                key = (scope, name, bucket)
                out[key] = out.get(key, Counts()) + counts
    return out
