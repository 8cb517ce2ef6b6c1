"""The return-path key ring: HMAC keys with ids, the newest signing, retired ones
still verifying for RETIRED_GRACE.

The ring is one JSON document, kept as a Secrets Manager secret (or a file on a
local stack):

    {"keys": [
      {"id": 2, "secret": "<base64, 32+ bytes>", "created": "2026-12-01T00:00:00Z"},
      {"id": 1, "secret": "...", "created": "2026-06-01T00:00:00Z",
       "retired": "2026-12-01T00:00:00Z"}
    ]}

Rotation (`rotated`) adds a key, retires the one that signed until then, and
drops keys retired longer ago than the grace: a bounce arrives days after its
message, and an ARF complaint can come weeks later, so a retired key keeps
verifying for 30 days.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Tokens signed just before a rotation come back as bounces for days and as
# complaints for weeks; past this a retired key's tokens are refused (expired_key).
RETIRED_GRACE = 30 * 86400.0
# HMAC-SHA256 keys shorter than this are guessable offline from captured tokens.
MIN_SECRET_BYTES = 32
NEW_SECRET_BYTES = 32
# Key ids travel in two bytes of every token.
MAX_KEY_ID = 0xFFFF


class KeyRingError(ValueError):
    """A key ring that cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class ReturnPathKey:
    id: int
    secret: bytes = b""
    created: float = 0.0  # epoch seconds: signs from then on (if it is the newest)
    retired: float | None = None  # epoch seconds: stopped signing; verifies for the grace

    def __repr__(self) -> str:  # never print the secret
        return f"ReturnPathKey(id={self.id}, created={self.created}, retired={self.retired})"


class KeyRing:
    """Keys by id. `signing(now)` is the newest live key; `verifying(id, now)` is a key
    that may still vouch for a token, or the reason it may not."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[ReturnPathKey]) -> None:
        self._keys: dict[int, ReturnPathKey] = {}
        for key in keys:
            if not 0 < key.id <= MAX_KEY_ID:
                raise KeyRingError(f"key id {key.id}: expected 1-{MAX_KEY_ID}")
            if key.id in self._keys:
                raise KeyRingError(f"key id {key.id} appears twice")
            if len(key.secret) < MIN_SECRET_BYTES:
                raise KeyRingError(f"key {key.id}: secret is {len(key.secret)} bytes; "
                                   f"use at least {MIN_SECRET_BYTES} random bytes")
            if key.retired is not None and key.retired < key.created:
                raise KeyRingError(f"key {key.id}: retired before it was created")
            self._keys[key.id] = key
        if not self._keys:
            raise KeyRingError("the key ring has no keys; add one (quiver return-path rotate)")

    @property
    def keys(self) -> tuple[ReturnPathKey, ...]:
        return tuple(sorted(self._keys.values(), key=lambda k: k.id))

    def signing(self, now: float) -> ReturnPathKey:
        """The key that signs at `now`: the newest created (highest id on a tie) among
        those created by then and not retired."""
        live = [k for k in self._keys.values()
                if k.created <= now and (k.retired is None or k.retired > now)]
        if not live:
            raise KeyRingError("no key may sign now: every key is retired or not yet "
                               "created; add one (quiver return-path rotate)")
        return max(live, key=lambda k: (k.created, k.id))

    def verifying(self, key_id: int, now: float) -> ReturnPathKey | str:
        """The key `key_id`, or "unknown_key" / "expired_key" (retired more than
        RETIRED_GRACE before `now`)."""
        key = self._keys.get(key_id)
        if key is None:
            return "unknown_key"
        if key.retired is not None and now - key.retired > RETIRED_GRACE:
            return "expired_key"
        return key


def parse_key_ring(text: str | bytes, *, origin: str = "key ring") -> KeyRing:
    """A KeyRing from its JSON document; KeyRingError naming `origin` and the problem."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise KeyRingError(f"{origin}: not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"keys"} or not isinstance(
            data.get("keys"), list):
        raise KeyRingError(f'{origin}: expected {{"keys": [...]}} and nothing else')
    keys = []
    for i, item in enumerate(data["keys"]):
        where = f"{origin}: keys[{i}]"
        if not isinstance(item, dict):
            raise KeyRingError(f"{where}: expected an object")
        unknown = set(item) - {"id", "secret", "created", "retired"}
        if unknown:
            raise KeyRingError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key_id = item.get("id")
        if isinstance(key_id, bool) or not isinstance(key_id, int):
            raise KeyRingError(f"{where}.id: expected an integer 1-{MAX_KEY_ID}")
        secret = item.get("secret")
        try:
            if not isinstance(secret, str):
                raise ValueError("missing")
            raw = base64.b64decode(secret, validate=True)
        except (ValueError, binascii.Error):
            raise KeyRingError(f"{where}.secret: expected base64 of {MIN_SECRET_BYTES}+ "
                               "random bytes") from None
        retired = item.get("retired")
        keys.append(ReturnPathKey(
            id=key_id, secret=raw, created=_time(item.get("created"), f"{where}.created"),
            retired=None if retired is None else _time(retired, f"{where}.retired"),
        ))
    try:
        return KeyRing(keys)
    except KeyRingError as exc:
        raise KeyRingError(f"{origin}: {exc}") from None


def dump_key_ring(ring: KeyRing) -> str:
    """The JSON document for `ring` (what parse_key_ring reads)."""
    keys: list[dict[str, Any]] = []
    for key in ring.keys:
        item: dict[str, Any] = {"id": key.id, "secret": base64.b64encode(key.secret).decode(),
                                "created": _stamp(key.created)}
        if key.retired is not None:
            item["retired"] = _stamp(key.retired)
        keys.append(item)
    return json.dumps({"keys": keys}, indent=2)


def rotated(ring: KeyRing | None, *, now: float, activate_at: float | None = None,
            random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> KeyRing:
    """`ring` with a new key that signs from `activate_at` (default `now`): the keys
    live until then are retired at that time, and keys retired more than
    RETIRED_GRACE before `now` are dropped (they verify nothing any more). A later
    activation lets every sender and verifier read the new key before any token
    names it. `ring` None starts a new ring."""
    start = now if activate_at is None else max(now, activate_at)
    old = ring.keys if ring is not None else ()
    kept = [replace(k, retired=start) if k.retired is None or k.retired > start else k
            for k in old if k.retired is None or now - k.retired <= RETIRED_GRACE]
    new_id = max((k.id for k in old), default=0) + 1
    if new_id > MAX_KEY_ID:
        raise KeyRingError(f"key ids are exhausted ({MAX_KEY_ID}); start a new ring")
    return KeyRing([*kept, ReturnPathKey(id=new_id, secret=random_bytes(NEW_SECRET_BYTES),
                                         created=start)])


def load_key_ring(*, key_secret: str | None = None, key_file: str | None = None,
                  read_secret: Callable[[str], bytes | str] | None = None,
                  base_dir: Path | None = None) -> KeyRing:
    """The ring from a Secrets Manager secret (through `read_secret`) or a file
    (relative to `base_dir`, the policy's folder); KeyRingError saying which failed."""
    if key_secret is not None:
        if read_secret is None:
            raise KeyRingError(f"return-path key_secret {key_secret}: no secret reader given")
        try:
            text = read_secret(key_secret)
        except Exception as exc:  # any reader failure: missing secret, access denied, ...
            raise KeyRingError(f"return-path key_secret {key_secret}: cannot read: {exc}") \
                from exc
        return parse_key_ring(text, origin=f"return-path key_secret {key_secret}")
    if key_file is not None:
        path = Path(key_file) if base_dir is None else base_dir / key_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyRingError(f"return-path key_file {path}: cannot read: {exc}") from exc
        return parse_key_ring(text, origin=f"return-path key_file {path}")
    raise KeyRingError("return path: set key_secret (a Secrets Manager id) or key_file")


def _time(value: Any, where: str) -> float:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise KeyRingError(f"{where}: expected an RFC 3339 UTC time like 2026-12-01T00:00:00Z")
    try:
        return datetime.fromisoformat(value[:-1] + "+00:00").timestamp()
    except ValueError:
        raise KeyRingError(f"{where}: expected an RFC 3339 UTC time like "
                           "2026-12-01T00:00:00Z") from None


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
