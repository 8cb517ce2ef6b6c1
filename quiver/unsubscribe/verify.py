"""Verify an unsubscribe token, or say why not.

The endpoint calls `UnsubscribeVerifier.verify(token)` on the last path segment
of the URL it was asked for; a `Refusal` is counted by its reason and changes
nothing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from quiver.returnpath.keys import KeyRing
from quiver.unsubscribe import token as token_mod
from quiver.unsubscribe.token import Subject

RefusalReason = Literal[
    "malformed",  # not a token of this version: bad base64url, wrong layout, too long
    "unknown_key",  # no key with the token's id in the ring
    "expired_key",  # the key was retired more than RETIRED_GRACE ago
    "bad_hmac",  # forged or edited
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = (
    "malformed", "unknown_key", "expired_key", "bad_hmac")


@dataclass(frozen=True, slots=True)
class Verified:
    subject: Subject
    key_id: int


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class UnsubscribeVerifier:
    """Checks a token's shape, its key (rotation grace included) and its MAC."""

    def __init__(self, *, keys: KeyRing | Callable[[], KeyRing],
                 clock: Callable[[], float] = time.time) -> None:
        # A callable reads the current ring (one that a rotation may have replaced).
        self._keys = keys if callable(keys) else (lambda ring=keys: ring)
        self._clock = clock

    def verify(self, text: str) -> Verified | Refusal:
        token = token_mod.decode(text)
        if isinstance(token, str):
            return Refusal("malformed", token)
        key = self._keys().verifying(token.key_id, self._clock())
        if isinstance(key, str):
            reason: RefusalReason = "expired_key" if key == "expired_key" else "unknown_key"
            return Refusal(reason, f"key id {token.key_id}")
        if not hmac.compare_digest(token_mod.mac(key.secret, token.signed_part), token.mac):
            return Refusal("bad_hmac", f"key id {token.key_id}")
        return Verified(subject=token.subject, key_id=key.id)
