"""The sender's check of a message's recipients against the suppression list.

Cost per message: nothing for answers cached in the last `cache_ttl` seconds;
the rest join one lookup per tenant together with those of every other message
that asks within BATCH_WINDOW, so a BatchGetItem carries up to 50 addresses (100
keys: the tenant's and the global one). A BatchGetItem costs the sender 215 µs of
CPU for 10 addresses and 366 µs for 50 (the lean client; bench/suppression_cost.py),
mostly per request, so filling it is what keeps the check cheap per message. A
message of 100 new recipients costs at most 4 requests of its own. A store that
fails raises StorageError to every message waiting on that lookup; what they do
then is `[suppression] on_error`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from quiver.events import Bounce, rfc3339_ms
from quiver.policy.handle import PolicyHandle
from quiver.storage.base import Suppression, SuppressionStore
from quiver.suppression.address import scope_name
from quiver.suppression.cache import MISS, SuppressionCache

log = logging.getLogger("quiver.suppression")

# While the table is down every message fails its lookup: one warning per this
# many seconds, with the count, instead of one per message.
FAILURE_LOG_INTERVAL = 10.0
# Addresses per lookup: with the global key beside the tenant's, one BatchGetItem
# (at most 100 keys) answers them all.
BATCH_ADDRESSES = 50
# Lookups of one tenant start at most this often: a lookup opened within this time
# of the last one's start collects other messages' addresses until then (or until it
# fills). A busy task (~1,000 messages/s, four receivers) fills a good part of a
# request in this time; a quiet one's lookup goes out at once, after the messages of
# the same loop turn joined it, so a lone message waits for no window.
BATCH_WINDOW = 0.01


@dataclass(slots=True)
class _Lookup:
    tenant: str | None
    addresses: dict[str, None] = field(default_factory=dict)
    done: asyncio.Future[dict[str, Suppression]] | None = None


class SuppressionCheck:
    def __init__(
        self,
        store: SuppressionStore,
        *,
        policy: PolicyHandle,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        window: float = BATCH_WINDOW,
    ) -> None:
        self._store = store
        self._window = window
        self._policy = policy
        self._clock = clock
        self._monotonic = monotonic
        self.cache = SuppressionCache()
        self._open: dict[str | None, _Lookup] = {}  # filling (BATCH_WINDOW), by tenant
        self._last_start: dict[str | None, float] = {}  # monotonic, by tenant
        self._tasks: set[asyncio.Task[None]] = set()
        self.lookups = 0  # store calls made
        self.failures = 0  # store calls failed
        self._unreported = 0
        self._reported_at = float("-inf")

    async def check(
        self, recipients: Sequence[str], *, tenant: str | None
    ) -> dict[str, Suppression]:
        """The suppressed ones among `recipients`, keyed as given, with the entry
        that applies; StorageError if the list could not be read for some."""
        rules = self._policy.current.suppression
        now, wall = self._monotonic(), self._clock()
        found: dict[str, Suppression] = {}
        missing: list[str] = []
        for rcpt in recipients:
            answer = self.cache.view(tenant, rcpt.lower(), now=now, ttl=rules.cache_ttl,
                                     wall=wall)
            if answer is MISS:
                missing.append(rcpt)
            elif isinstance(answer, Suppression):
                found[rcpt] = answer
        if not missing:
            return found
        waits = {id(f): f for f in (self._join(tenant, rcpt.lower()) for rcpt in missing)}
        answers: dict[str, Suppression] = {}
        for done in waits.values():
            # Shielded: a message cancelled while it waits leaves the lookup to the others.
            answers.update(await asyncio.shield(done))
        for rcpt in missing:
            entry = answers.get(rcpt.lower())
            if entry is not None:
                found[rcpt] = entry
        return found

    def learn(self, entry: Suppression) -> None:
        """An entry this task has just added: in force here at once, not after the
        cached answer for its address ages out."""
        rules = self._policy.current.suppression
        self.cache.put(entry.tenant, entry.address.lower(), entry, now=self._monotonic(),
                       max_entries=rules.cache_entries)

    def _join(self, tenant: str | None, address: str) -> asyncio.Future[dict[str, Suppression]]:
        lookup = self._open.get(tenant)
        if lookup is None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[dict[str, Suppression]] = loop.create_future()
            # Mark a failure retrieved even if every waiter was cancelled.
            done.add_done_callback(lambda f: f.cancelled() or f.exception())
            lookup = self._open[tenant] = _Lookup(tenant, done=done)
            last = self._last_start.get(tenant)
            wait = 0.0 if last is None else last + self._window - self._monotonic()
            if wait > 0:
                loop.call_later(min(wait, self._window), self._start, lookup)
            else:
                loop.call_soon(self._start, lookup)
        lookup.addresses[address] = None
        assert lookup.done is not None
        if len(lookup.addresses) >= BATCH_ADDRESSES:
            self._start(lookup)
        return lookup.done

    def _start(self, lookup: _Lookup) -> None:
        if self._open.get(lookup.tenant) is not lookup:
            return  # started already, when it filled up
        del self._open[lookup.tenant]
        now = self._monotonic()
        # A start older than the window holds nothing back any more: forgotten, so the
        # map holds only the tenants looked up within the window, however many send.
        self._last_start = {tenant: at for tenant, at in self._last_start.items()
                            if now - at < self._window}
        self._last_start[lookup.tenant] = now
        task = asyncio.get_running_loop().create_task(self._run(lookup))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, lookup: _Lookup) -> None:
        assert lookup.done is not None
        addresses = list(lookup.addresses)
        self.lookups += 1
        try:
            found = await self._store.lookup(addresses, tenant=lookup.tenant)
        except asyncio.CancelledError:
            lookup.done.cancel()
            raise
        except Exception as exc:
            self._report(exc)
            if not lookup.done.done():
                lookup.done.set_exception(exc)
            return
        rules = self._policy.current.suppression
        now = self._monotonic()
        for address in addresses if rules.cache_ttl > 0 else ():
            self.cache.store(lookup.tenant, address, found.get(address), now=now,
                             max_entries=rules.cache_entries)
        if not lookup.done.done():
            lookup.done.set_result(found)


    def _report(self, exc: Exception) -> None:
        self.failures += 1
        self._unreported += 1
        now = self._monotonic()
        if now - self._reported_at < FAILURE_LOG_INTERVAL:
            return
        action = ("deferred" if self._policy.current.suppression.on_error == "defer"
                  else "sent unchecked")
        log.warning("suppression list unreadable (%d failed lookups since the last report): "
                    "%s; their messages are %s ([suppression] on_error)", self._unreported, exc,
                    action)
        self._unreported = 0
        self._reported_at = now


def describe(entry: Suppression) -> str:
    """One line for people: why, where and since when an address is suppressed."""
    since = rfc3339_ms(entry.created_at)
    text = f"{entry.reason} in scope {scope_name(entry.tenant)} since {since}"
    if entry.expires_at is not None:
        text += f" until {rfc3339_ms(entry.expires_at)}"
    if entry.source:
        text += f"; source: {entry.source}"
    return text


def suppressed_fields(entry: Suppression) -> tuple[str, Bounce]:
    """A `suppressed` event's `reason` and `bounce`: the kind is "suppressed", the
    category the entry's reason (hard_bounce, complaint, unsubscribe, manual), the
    reason `describe`'s line (scope, time, source)."""
    text = f"on the suppression list: {describe(entry)}"
    return text, {"kind": "suppressed", "category": entry.reason, "reason": text}
