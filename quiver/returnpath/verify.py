"""Verify a return path back to its message, or say why not.

The bounce and FBL intakes call `ReturnPathVerifier.verify(address)` on the address
a DSN or complaint came to, and count each `Refusal` by its reason before dropping
the mail: a forged or stale bounce must never suppress anyone.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from quiver.returnpath import token as token_mod
from quiver.returnpath.keys import KeyRing
from quiver.storage.base import ReturnPathStore

RefusalReason = Literal[
    "malformed",  # not an address, or its local part is not a b-<token> of this version
    "wrong_domain",  # the domain is none of the policy's bounce domains
    "unknown_key",  # no key with the token's id in the ring
    "expired_key",  # the key was retired more than RETIRED_GRACE ago
    "bad_hmac",  # forged, edited, or moved to another bounce domain
    "unknown_message",  # signed, but the store has nothing for it (lapsed, never stored)
    "mismatch",  # the stored record does not hash to the token's reference
    "other_tenant",  # the record's tenant may not use this bounce domain
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = (
    "malformed", "wrong_domain", "unknown_key", "expired_key", "bad_hmac",
    "unknown_message", "mismatch", "other_tenant",
)


@dataclass(frozen=True, slots=True)
class Verified:
    message_id: str
    recipient: str
    tenant: str | None
    campaign: str | None
    key_id: int
    bounce_domain: str


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class ReturnPathVerifier:
    """Checks, in order: the domain, the token's shape, its key, its MAC, the stored
    record, and the record's tenant against the domain's. The HMAC is checked before
    the store is read, so forged bounces cost no lookup."""

    def __init__(self, *, keys: KeyRing | Callable[[], KeyRing], store: ReturnPathStore,
                 bounce_domains: Mapping[str, frozenset[str] | None],
                 clock: Callable[[], float] = time.time) -> None:
        # A callable reads the current ring (one that a rotation may have replaced).
        self._keys = keys if callable(keys) else (lambda ring=keys: ring)
        self._store = store
        # Bounce domain → the tenants whose mail uses it (None: any tenant).
        self._domains = {d.lower(): t for d, t in bounce_domains.items()}
        self._clock = clock

    def verify(self, address: str) -> Verified | Refusal:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or not local or not domain:
            return Refusal("malformed", "not an address")
        domain = domain.lower().rstrip(".")
        if domain not in self._domains:
            return Refusal("wrong_domain", f"{domain[:253]!r} is not a bounce domain")
        token = token_mod.decode(local)
        if token is None:
            return Refusal("malformed", "local part is not a b-<token> of version "
                           f"{token_mod.VERSION}")
        key = self._keys().verifying(token.key_id, self._clock())
        if isinstance(key, str):
            reason: RefusalReason = "expired_key" if key == "expired_key" else "unknown_key"
            return Refusal(reason, f"key id {token.key_id}")
        expected = token_mod.mac(key.secret, token.signed_part, domain)
        if not hmac.compare_digest(expected, token.mac):
            return Refusal("bad_hmac", f"key id {token.key_id}")
        record = self._store.get(token.reference)
        if record is None:
            return Refusal("unknown_message", f"reference {token.reference.hex()}")
        if token_mod.reference(message_id=record.message_id, recipient=record.recipient,
                               tenant=record.tenant, campaign=record.campaign) \
                != token.reference:
            return Refusal("mismatch", f"reference {token.reference.hex()}")
        tenants = self._domains[domain]
        if tenants is not None and record.tenant not in tenants:
            return Refusal("other_tenant", f"tenant {record.tenant!r} does not use {domain}")
        return Verified(message_id=record.message_id, recipient=record.recipient,
                        tenant=record.tenant, campaign=record.campaign, key_id=key.id,
                        bounce_domain=domain)
