"""Sign feedback reports the way a reporter does, for the DKIM tests (unit and local DNS)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"content-type",
                  b"mime-version"]


@dataclass(frozen=True)
class ReporterKey:
    domain: str
    selector: str
    private_pem: bytes
    txt: str  # the DKIM key record's text (RFC 6376 3.6.1)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, message: bytes) -> bytes:
        header = dkim.sign(
            message, selector=self.selector.encode(), domain=self.domain.encode(),
            privkey=self.private_pem, include_headers=SIGNED_HEADERS,
        )
        return bytes(header) + message


def new_key(domain: str, selector: str = "fbl", bits: int = 2048) -> ReporterKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ReporterKey(domain, selector, pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())


class TxtTable:
    """A dkimpy dnsfunc over a dict: the key records a test publishes."""

    def __init__(self, *keys: ReporterKey) -> None:
        self.records = {k.record_name: k.txt.encode() for k in keys}
        self.asked: list[str] = []

    def __call__(self, name: bytes, timeout: int = 5) -> bytes | None:
        text = name.decode().rstrip(".")
        self.asked.append(text)
        return self.records.get(text)
