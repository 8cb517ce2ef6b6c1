"""Key rotation where the ring is kept: a Secrets Manager secret or a local file.

Each writes the rotated ring whole (a new secret version), so a reader sees the
old ring or the new one, never a mix. Senders pick the new ring up within
quiver.returnpath.refresh.REFRESH_INTERVAL; intakes at their next read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quiver.returnpath.keys import KeyRing, KeyRingError, dump_key_ring, parse_key_ring, rotated


def rotate_secret(client: Any, secret_id: str, *, now: float,
                  activate_in: float = 0.0) -> KeyRing:
    """Rotate the ring in secret `secret_id`, the new key signing `activate_in` seconds
    from `now` (a missing secret is created with a first key that signs at once)."""
    errors = client.exceptions
    try:
        current = client.get_secret_value(SecretId=secret_id)
    except errors.ResourceNotFoundException:
        ring = rotated(None, now=now)
        client.create_secret(Name=secret_id, SecretString=dump_key_ring(ring),
                             Description="Quiver return-path (VERP) HMAC key ring")
        return ring
    text = current.get("SecretString")
    if text is None:
        raise KeyRingError(f"secret {secret_id} is binary; expected the key ring's JSON")
    ring = rotated(parse_key_ring(text, origin=f"secret {secret_id}"), now=now,
                   activate_at=now + activate_in)
    client.put_secret_value(SecretId=secret_id, SecretString=dump_key_ring(ring))
    return ring


def rotate_file(path: Path, *, now: float, activate_in: float = 0.0) -> KeyRing:
    """Rotate the ring in `path` (created if missing, the first key signing at once),
    readable by its owner only."""
    old = None
    if path.exists():
        old = parse_key_ring(path.read_text(encoding="utf-8"), origin=str(path))
    ring = rotated(old, now=now, activate_at=now + activate_in if old is not None else None)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dump_key_ring(ring))
    tmp.replace(path)
    return ring
