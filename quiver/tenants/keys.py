"""Per-tenant API keys for the ingresses: a Bearer token for the HTTP API, the password
of SMTP AUTH (username: the tenant or the key id), as SES's SMTP credentials are.

A key reads `qk_<key id>_<secret>`: 16 hex digits of id (the item it is checked
against), 64 hex digits of secret (256 random bits). Only a hash of the secret is
stored, HMAC-SHA256 keyed with the key id. A fast hash is enough because the secret
is random: a slow KDF (scrypt, PBKDF2) stretches what a person can remember, so
that a guess costs more than a dictionary allows; against 256 random bits no
guessing works at any speed, and a slow hash would cost CPU on every request and
every SMTP login. Keying the hash with the id binds it to its item: a hash copied
to another key's item does not verify there.

The key is shown once, when created; it cannot be read back. Revoking keeps the
item (who had a key, until when) and refuses the key from the next request on:
keys are read with a strongly consistent GetItem, uncached.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quiver.storage.base import TenantKeyStore

PREFIX = "qk_"
_KEY = re.compile(r"^qk_([0-9a-f]{16})_([0-9a-f]{64})$")
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
# At most this many tries to draw an unused key id; 64 random bits collide in
# practice never, so more than one try means a broken random source.
_CREATE_TRIES = 3


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    # hex HMAC-SHA256 of the secret, keyed with the key id
    digest: str
    created_at: float
    who: str
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class TenantKeyError(ValueError):
    """A key operation that cannot be done (an unknown key id); the message says why."""


def key_id_of(key: str) -> str | None:
    """The key id a well-formed key names; None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def digest_of(key_id: str, secret: str) -> str:
    return hmac.new(("quiver-tenant-key:" + key_id).encode("ascii"),
                    secret.encode("ascii"), hashlib.sha256).hexdigest()


class TenantKeys:
    """Create, revoke, list and verify keys over a `TenantKeyStore`."""

    def __init__(self, store: TenantKeyStore) -> None:
        self._store = store

    async def create(self, *, tenant: str, who: str, now: float) -> tuple[str, KeyRecord]:
        """A new key for `tenant`: (the key, shown this once; its record)."""
        for _ in range(_CREATE_TRIES):
            key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
            record = KeyRecord(key_id=key_id, tenant=tenant, digest=digest_of(key_id, secret),
                               created_at=now, who=who)
            if await self._store.put_new(record):
                return f"{PREFIX}{key_id}_{secret}", record
        raise TenantKeyError("could not draw an unused key id")

    async def revoke(self, key_id: str, *, now: float) -> KeyRecord:
        """Revoke a key; its record as revoked (an already revoked key keeps its time)."""
        if not KEY_ID.match(key_id):
            raise TenantKeyError(f"{key_id!r} is not a key id (16 hex digits; `quiver keys list`)")
        record = await self._store.revoke(key_id, now=now)
        if record is None:
            raise TenantKeyError(f"no key {key_id}")
        return record

    async def list(self, *, tenant: str | None = None) -> list[KeyRecord]:
        records = await self._store.all()
        return sorted((r for r in records if tenant is None or r.tenant == tenant),
                      key=lambda r: (r.tenant, r.created_at, r.key_id))

    async def verify(self, key: str) -> str | None:
        """The tenant whose active key `key` is; None for a malformed, unknown or
        revoked key. Raises StorageError when the store cannot answer (a caller
        answers "try again", not "refused")."""
        match = _KEY.match(key)
        if match is None:
            return None
        key_id, secret = match.groups()
        record = await self._store.get(key_id)
        if record is None or not record.active:
            return None
        if not hmac.compare_digest(record.digest, digest_of(key_id, secret)):
            return None
        return record.tenant
