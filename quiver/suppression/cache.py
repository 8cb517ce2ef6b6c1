"""Short-lived answers of the suppression list, per (scope, address).

An answer is the entry of that scope, or None when the scope has none for the
address (a negative answer: most lookups are those, and caching them is what
keeps repeat recipients off the table). Keyed by scope, not by the tenant that
asked, so a learned global entry reaches every tenant's view at once. Bounded:
answers expire `ttl` seconds after they were stored, and past `max_entries` the
oldest are dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from quiver.storage.base import ALL_TENANTS, Suppression


class _Miss:
    __slots__ = ()


MISS: Final = _Miss()
Answer = Suppression | None


class SuppressionCache:
    __slots__ = ("_answers",)

    def __init__(self) -> None:
        # (scope tenant, lower-cased address) -> (stored at, answer); insertion order
        # is age order, as every answer lives the same ttl.
        self._answers: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def _get(self, key: tuple[str, str], *, now: float, ttl: float) -> Answer | _Miss:
        hit = self._answers.get(key)
        if hit is None:
            return MISS
        if now - hit[0] >= ttl:
            del self._answers[key]
            return MISS
        return hit[1]

    def view(self, tenant: str | None, address: str, *, now: float, ttl: float,
             wall: float) -> Answer | _Miss:
        """What a message of `tenant` sees for `address` (lower-cased): the tenant's
        active entry, else the global one, else None; MISS if a needed answer is
        not cached. `wall` is the epoch time entries' expiry is judged at."""
        if tenant is not None and tenant != ALL_TENANTS:
            own = self._get((tenant, address), now=now, ttl=ttl)
            if isinstance(own, _Miss):
                return MISS
            if own is not None and own.active(wall):
                return own
        shared = self._get((ALL_TENANTS, address), now=now, ttl=ttl)
        if isinstance(shared, _Miss) or shared is None or shared.active(wall):
            return shared
        return None

    def store(self, tenant: str | None, address: str, found: Suppression | None, *,
              now: float, max_entries: int) -> None:
        """Remember a lookup's answer for a message of `tenant`: the entry found (the
        tenant's own wins, so a global one means the tenant has none) or None."""
        if tenant is not None and tenant != ALL_TENANTS:
            if found is not None and found.tenant != ALL_TENANTS:
                # The global answer stays unknown: the tenant's own entry hid it.
                self.put(tenant, address, found, now=now, max_entries=max_entries)
                return
            self.put(tenant, address, None, now=now, max_entries=max_entries)
        self.put(ALL_TENANTS, address, found, now=now, max_entries=max_entries)

    def put(self, scope: str, address: str, answer: Answer, *, now: float,
            max_entries: int) -> None:
        key = (scope, address)
        self._answers.pop(key, None)
        if max_entries <= 0:
            return
        self._answers[key] = (now, answer)
        while len(self._answers) > max_entries:
            self._answers.popitem(last=False)

    def forget(self, scope: str, address: str) -> None:
        self._answers.pop((scope, address), None)
