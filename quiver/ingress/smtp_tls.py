"""The SMTP listener's TLS certificate: from PEM files, or from a Secrets Manager
secret (read once at start; a task picks up a renewed certificate when it is
replaced, as a rolling deployment does).

The secret holds JSON `{"certificate": "<PEM chain>", "private_key": "<PEM key>"}`,
the shape an ACM export (certificate + chain, decrypted key) is stored in.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any


class TlsSourceError(ValueError):
    """The certificate could not be loaded; the message says from where and why."""


def context_from_files(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # TLS 1.2 is the floor that submission clients and providers still accept.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSourceError(f"cannot load the certificate {cert} with key {key}: {exc}") from None
    return context


def context_from_secret(secret_id: str, *, secrets: Any) -> ssl.SSLContext:
    """`secrets` is a boto3 Secrets Manager client."""
    try:
        text = secrets.get_secret_value(SecretId=secret_id)["SecretString"]
        data = json.loads(text)
        cert, key = data["certificate"], data["private_key"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TlsSourceError(
            f"secret {secret_id} must hold JSON with 'certificate' and 'private_key' "
            f"(PEM): {exc}") from None
    # ssl loads a chain only from files: written private to this process, then removed.
    with tempfile.TemporaryDirectory(prefix="quiver-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_text(cert)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return context_from_files(cert_path, key_path)
