"""Addresses and scopes as the suppression list keys them.

An address is validated as an envelope address (quiver.addresses) and then
lower-cased whole, local part included. RFC 5321 lets a receiving host treat
`Ann@` and `ann@` as different mailboxes, but no large mailbox provider does, and
a miss here mails someone who asked not to be mailed: over-suppressing the rare
case-sensitive mailbox is the safer error. The sender's recipients compare the
same way (the stores lower-case every key).
"""

from __future__ import annotations

from quiver.addresses import AddressError, normalize_address
from quiver.storage.base import ALL_TENANTS

GLOBAL_SCOPE = "global"
_TENANT_PREFIX = "tenant:"
MAX_TENANT = 128  # as the envelope's `tenant`


class ScopeError(ValueError):
    """A scope that is neither "global" nor "tenant:<name>"."""


def suppression_address(raw: str) -> str:
    """The key form of an address; AddressError says what is wrong with it.
    Surrounding whitespace is dropped (CSV cells, pasted lists)."""
    if not isinstance(raw, str):
        raise AddressError(f"expected a string, got {type(raw).__name__}")
    return normalize_address(raw.strip()).lower()


def scope_name(tenant: str) -> str:
    """"global" for ALL_TENANTS, else "tenant:<name>"."""
    return GLOBAL_SCOPE if tenant == ALL_TENANTS else f"{_TENANT_PREFIX}{tenant}"


def parse_scope(text: str) -> str:
    """The tenant a scope names (ALL_TENANTS for "global")."""
    text = text.strip()
    if text == GLOBAL_SCOPE:
        return ALL_TENANTS
    tenant = text.removeprefix(_TENANT_PREFIX)
    if tenant == text or not valid_tenant(tenant):
        raise ScopeError(f"scope {text!r}: expected 'global' or 'tenant:<name>' (1-128 "
                         "characters of [A-Za-z0-9._:@/+-], as a message's tenant)")
    return tenant


def valid_tenant(tenant: str) -> bool:
    return 0 < len(tenant) <= MAX_TENANT and all(
        c.isascii() and (c.isalnum() or c in "._:@/+-") for c in tenant)
