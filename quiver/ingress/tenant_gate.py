"""What the SMTP listener asks about tenants: who a credential belongs to, which
domains a tenant may send from, and its limits.

A narrow interface, so the listener does not care where credentials and the
tenant policy are kept (the key store, the policy file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TenantLimits:
    # None: no limit of that kind for the tenant.
    max_connections: int | None = None
    max_messages_per_second: float | None = None


class TenantGate(Protocol):
    def verify(self, key: str) -> str | None:
        """The tenant whose credential `key` is, or None (unknown, revoked)."""
        ...

    def may_send_from(self, tenant: str, address: str) -> bool:
        """Whether `tenant` may use `address` (envelope sender) as its own."""
        ...

    def limits(self, tenant: str) -> TenantLimits:
        ...
