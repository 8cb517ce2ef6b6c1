"""The `[suppression]` policy section: how the sender checks the suppression list.

Its own module (model and parser) so that other sections grow beside it without
touching it. Live: a reload applies it to the next message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from quiver.policy.durations import bounded_duration

OnError = Literal["defer", "send"]
ON_ERROR: tuple[OnError, ...] = ("defer", "send")
KEYS = frozenset({"on_error", "error_retry", "cache_ttl", "cache_entries",
                  "hard_bounce_categories"})
# A cached answer is at most this old: the bound on how long a new entry (another
# task's hard bounce, an import) or a removal takes to reach every sender.
MAX_CACHE_TTL = 900.0
# About 300 bytes an entry (key, address, answer): 1,000,000 is 300 MB, past any
# sender task's memory.
MAX_CACHE_ENTRIES = 1_000_000
MIN_ERROR_RETRY, MAX_ERROR_RETRY = 5.0, 3600.0


@dataclass(frozen=True, slots=True)
class SuppressionPolicy:
    # The list could not be read (DynamoDB throttling, an outage): "defer" holds the
    # unchecked recipients back (re-enqueued, `error_retry` later, no attempt
    # counted, until their deadline); "send" delivers them unchecked, so a
    # suppressed address may be mailed while the list is down. Nothing is lost
    # either way; "defer" never mails a suppressed address.
    on_error: OnError = "defer"
    error_retry: float = 60.0
    # Answers (suppressed or not) are kept this long per (scope, address). At ESP
    # volume most addresses appear once per campaign, so the cache pays off on
    # bursts to one address (transactional flows, retries); a minute keeps those
    # reads off DynamoDB and is far inside the two days a one-click unsubscribe may
    # take. A task's own hard bounces reach its cache at once; 0 turns it off.
    cache_ttl: float = 60.0
    # At most this many cached answers (oldest dropped first): about 15 MB.
    cache_entries: int = 50_000
    # Synchronous refusals (5xx to RCPT or DATA) whose classification is `hard` with
    # one of these categories (quiver/data/bounce_rules.toml) suppress the recipient
    # for the message's tenant: 5.1.1 and its kin. [] turns it off.
    hard_bounce_categories: tuple[str, ...] = ("bad-mailbox",)


def parse_suppression(
    t: Mapping[str, Any], *, error: Callable[[str, str], None]
) -> SuppressionPolicy:
    """The section from its TOML table; each problem goes to `error(path, message)`."""
    d = SuppressionPolicy()
    for key in t:
        if key not in KEYS:
            error(f"suppression.{key}", "unknown key (allowed: " + ", ".join(sorted(KEYS)) + ")")
    on_error = t.get("on_error", d.on_error)
    if on_error not in ON_ERROR:
        error("suppression.on_error", f"expected 'defer' or 'send', got {on_error!r}")
        on_error = d.on_error

    def duration(key: str, default: float, low: float, high: float) -> float:
        return bounded_duration(t, key, section="suppression", default=default, low=low,
                                high=high, error=error)

    entries = t.get("cache_entries", d.cache_entries)
    if (isinstance(entries, bool) or not isinstance(entries, int)
            or not 0 <= entries <= MAX_CACHE_ENTRIES):
        error("suppression.cache_entries",
              f"expected a whole number 0-{MAX_CACHE_ENTRIES}, got {entries!r}")
        entries = d.cache_entries
    categories = t.get("hard_bounce_categories", list(d.hard_bounce_categories))
    if not isinstance(categories, list) or not all(
            isinstance(c, str) and c for c in categories):
        error("suppression.hard_bounce_categories",
              f"expected a list of bounce categories, got {categories!r}")
        categories = list(d.hard_bounce_categories)
    return SuppressionPolicy(
        on_error=on_error,
        error_retry=duration("error_retry", d.error_retry, MIN_ERROR_RETRY, MAX_ERROR_RETRY),
        cache_ttl=duration("cache_ttl", d.cache_ttl, 0.0, MAX_CACHE_TTL),
        cache_entries=entries,
        hard_bounce_categories=tuple(categories),
    )
