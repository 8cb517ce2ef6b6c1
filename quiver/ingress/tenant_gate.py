"""What the SMTP listener asks about tenants: whose a credential is, what a tenant may
send from, and its limits; answered from the policy's [tenants] sections and the
tenant key store (quiver.policy.tenants, quiver.tenants.keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from quiver.policy.tenants import TenantsPolicy, message_refusal, tenant_may_send_from
from quiver.tenants.keys import TenantKeys


@dataclass(frozen=True, slots=True)
class TenantLimits:
    # None: no limit of that kind for the tenant.
    max_connections: int | None = None
    max_messages_per_second: float | None = None


class TenantGate(Protocol):
    async def verify(self, key: str) -> str | None:
        """The tenant whose key `key` is, or None (malformed, unknown, revoked); raises
        StorageError when the store cannot answer."""
        ...

    def sender_refusal(self, tenant: str, address: str) -> str | None:
        """Why `tenant` may not use `address` as envelope sender; None if it may."""
        ...

    def message_refusal(self, tenant: str, *, envelope_from: str, raw: bytes) -> str | None:
        """Why `tenant` may not send this message (its envelope sender or a From
        header address outside its domains); None if it may."""
        ...

    def limits(self, tenant: str) -> TenantLimits:
        ...


@dataclass(frozen=True)
class PolicyTenantGate:
    policy: TenantsPolicy = field(default_factory=TenantsPolicy)
    # None: no key store configured, so no key verifies.
    keys: TenantKeys | None = None

    async def verify(self, key: str) -> str | None:
        return None if self.keys is None else await self.keys.verify(key)

    def sender_refusal(self, tenant: str, address: str) -> str | None:
        return tenant_may_send_from(self.policy, tenant, address)

    def message_refusal(self, tenant: str, *, envelope_from: str, raw: bytes) -> str | None:
        refused = message_refusal(self.policy, tenant, envelope_from=envelope_from, raw=raw)
        return None if refused is None else refused[1]

    def limits(self, tenant: str) -> TenantLimits:
        found = self.policy.tenants.get(tenant)
        if found is None:
            return TenantLimits()
        return TenantLimits(max_connections=found.max_connections,
                            max_messages_per_second=found.max_messages_per_second)
