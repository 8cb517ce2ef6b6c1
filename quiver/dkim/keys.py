"""Signing keys: make one, load one from PEM, and publish its public half in DNS."""

from __future__ import annotations

import base64
from typing import Literal, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from quiver.dkim.errors import DkimError

Algorithm: TypeAlias = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
ALGORITHMS: tuple[Algorithm, ...] = ("rsa-sha256", "ed25519-sha256")

# RFC 8301 forbids verifying with RSA keys under 1024 bits; above 4096 the
# signature no longer fits comfortably in one DNS TXT answer and each signature
# costs several milliseconds of CPU on the sender.
RSA_MIN_BITS = 1024
RSA_MAX_BITS = 4096
# 2048 bits: what the large mailbox providers expect and RFC 8301 recommends.
RSA_GENERATE_BITS = 2048


def check_algorithm(algorithm: str) -> Algorithm:
    for known in ALGORITHMS:
        if algorithm == known:
            return known
    raise DkimError(f"unknown DKIM algorithm {algorithm!r}: expected rsa-sha256 or ed25519-sha256")


def generate_private_key(algorithm: str) -> bytes:
    """A new private key for `algorithm` as unencrypted PKCS#8 PEM (RSA: 2048 bits)."""
    key: PrivateKey
    if check_algorithm(algorithm) == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_GENERATE_BITS)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, algorithm: str) -> PrivateKey:
    """The private key in `pem`, checked to fit `algorithm`. Raises DkimError otherwise."""
    algorithm = check_algorithm(algorithm)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:  # cryptography's way of saying "needs a password"
        raise DkimError(f"private key is encrypted; store it unencrypted ({e})") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise DkimError(f"not a PEM private key: {e}") from e
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimError(f"rsa-sha256 needs an RSA key, got {_kind(key)}")
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise DkimError(
                f"RSA key has {key.key_size} bits; use {RSA_MIN_BITS} to {RSA_MAX_BITS}"
                f" ({RSA_GENERATE_BITS} recommended)"
            )
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DkimError(f"ed25519-sha256 needs an Ed25519 key, got {_kind(key)}")
    return key


def dns_txt_value(pem: bytes) -> str:
    """The DKIM key record for the selector's TXT name `<selector>._domainkey.<domain>`.

    `pem` is the private key (or its public key). RSA publishes the DER
    SubjectPublicKeyInfo; Ed25519 the raw 32-byte key (RFC 8463 4.2). An RSA-2048
    value is longer than 255 bytes: DNS tooling splits it into several strings
    of one TXT record, which verifiers join back together.
    """
    public: object
    try:
        public = serialization.load_pem_private_key(pem, password=None).public_key()
    except (TypeError, ValueError, UnsupportedAlgorithm):
        try:
            public = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise DkimError(f"not an unencrypted PEM private or public key: {e}") from e
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    raise DkimError(f"DKIM keys are RSA or Ed25519, got {_kind(public)}")


def _kind(key: object) -> str:
    return type(key).__name__.lstrip("_")
