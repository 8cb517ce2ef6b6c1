"""A local certificate authority and the certificates it issues, cached on disk.

The sender verifies the MX hostname against a CA file exactly as it does in
production; locally that CA is one made here, so verification stays on.
Certificates are reused across runs while they are valid and cover the same
names, so repeated `quiver local` runs do not churn keys.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
# A cached certificate this close to expiry is reissued rather than reused, so a
# long demo run never crosses an expiry in the middle.
RENEW_BEFORE = dt.timedelta(days=7)
# Backdated so a clock a little behind the issuer's still accepts the cert.
CLOCK_SKEW = dt.timedelta(hours=1)


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Serialise issuers sharing a directory (parallel test workers, demo + tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _load(cert_path: Path, key_path: Path) -> _Pair | None:
    """The pair on disk if both parse and belong together, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, key


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def make_local_ca(dir: Path) -> tuple[Path, Path]:
    """Create (or reuse) a local CA in `dir`; returns (ca cert path, ca key path)."""
    cert_path, key_path = dir / CA_CERT_NAME, dir / CA_KEY_NAME
    with _dir_lock(dir):
        now = dt.datetime.now(dt.UTC)
        loaded = _load(cert_path, key_path)
        if loaded is not None and _fresh(loaded[0], now):
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Quiver local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Quiver local CA"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(_ski(key), critical=False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a reader that sees the new cert must also see its key.
        _write_atomic(key_path, _key_pem(key), private=True)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        return cert_path, key_path


def _san_entries(hostnames: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = [x509.DNSName(h.lower().rstrip(".")) for h in hostnames]
    entries += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return entries


def _san_set(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {f"dns:{n}" for n in san.get_values_for_type(x509.DNSName)}
    names |= {f"ip:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}
    return names


def _wanted_set(hostnames: Sequence[str], ips: Sequence[str]) -> set[str]:
    names = {f"dns:{h.lower().rstrip('.')}" for h in hostnames}
    names |= {f"ip:{ipaddress.ip_address(ip)}" for ip in ips}
    return names


def _file_stem(hostnames: Sequence[str], ips: Sequence[str]) -> str:
    first = (hostnames or ips)[0]
    return re.sub(r"[^A-Za-z0-9.-]", "_", first.lower().rstrip(".")) or "cert"


def issue_cert(
    *,
    ca_dir: Path,
    hostnames: Sequence[str],
    ips: Sequence[str] = (),
    dir: Path,
) -> tuple[Path, Path]:
    """Issue (or reuse) a server certificate from the CA in `ca_dir`; returns (cert, key).

    Files are named after the first hostname (or IP) in `dir`. A cached pair is
    reused only if it is still valid, was signed by the current CA and covers
    exactly the requested names; otherwise it is replaced.
    """
    if not hostnames and not ips:
        raise ValueError("issue_cert needs at least one hostname or IP address")
    ca_cert_path, ca_key_path = make_local_ca(ca_dir)
    ca = _load(ca_cert_path, ca_key_path)
    if ca is None:
        raise RuntimeError(f"the local CA in {ca_dir} is unreadable; delete it to recreate it")
    ca_cert, ca_key = ca
    stem = _file_stem(hostnames, ips)
    cert_path, key_path = dir / f"{stem}.crt", dir / f"{stem}.key"
    with _dir_lock(dir):
        now = dt.datetime.now(dt.UTC)
        loaded = _load(cert_path, key_path)
        if loaded is not None:
            cert = loaded[0]
            try:
                cert.verify_directly_issued_by(ca_cert)
                signed_by_ca = True
            except (ValueError, TypeError, InvalidSignature):
                signed_by_ca = False
            if signed_by_ca and _fresh(cert, now) and _san_set(cert) == _wanted_set(hostnames, ips):
                return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = (hostnames or ips)[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
            .add_extension(
                x509.SubjectAlternativeName(_san_entries(hostnames, ips)), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(_ski(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_atomic(key_path, _key_pem(key), private=True)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        return cert_path, key_path
