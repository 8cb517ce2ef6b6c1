"""The signers a sender holds, by From domain, built from the policy's [[dkim]] keys.

A domain may have more than one key (an RSA and an ed25519 selector, or an old and a
new one during a rotation): each adds its own DKIM-Signature, and a verifier that
knows one algorithm or selector finds the signature it can check (RFC 8463 3;
RFC 6376 4.2). Each signature is one private-key operation, so keys per domain are
few: MAX_KEYS_PER_DOMAIN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from quiver.dkim.errors import DkimError
from quiver.dkim.signer import DEFAULT_SIGNED_HEADERS, DkimSigner
from quiver.policy import DkimKey

# RSA + ed25519, plus a new selector of one of them while it is rotated in.
MAX_KEYS_PER_DOMAIN = 3


class SignerSet:
    """Picks the signers for a message's From domain (exact match, case-insensitive),
    in the policy's order.

    A subdomain does not fall back to its parent's key: which domains are signed
    is the policy's decision.
    """

    __slots__ = ("_by_domain",)

    def __init__(self, signers: Iterable[DkimSigner]) -> None:
        self._by_domain: dict[str, tuple[DkimSigner, ...]] = {}
        for signer in signers:
            present = self._by_domain.get(signer.domain, ())
            if any(s.selector == signer.selector for s in present):
                raise DkimError(f"two DKIM signers for {signer.domain} with selector "
                                f"{signer.selector}; keep one per selector")
            if len(present) >= MAX_KEYS_PER_DOMAIN:
                raise DkimError(f"more than {MAX_KEYS_PER_DOMAIN} DKIM signers for "
                                f"{signer.domain}; each costs a signature per message")
            self._by_domain[signer.domain] = (*present, signer)

    def for_domain(self, domain: str) -> tuple[DkimSigner, ...]:
        """The domain's signers, each adding one DKIM-Signature; () if it has none."""
        return self._by_domain.get(domain.lower().rstrip("."), ())

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_domain.values())

    def __iter__(self) -> Iterator[DkimSigner]:
        return (s for signers in self._by_domain.values() for s in signers)


def signers_from_policy(
    keys: Sequence[DkimKey], *,
    load_secret: Callable[[str], bytes | str] | None = None,
    base_dir: Path | None = None,
) -> SignerSet:
    """A SignerSet for the policy's DKIM keys; raises DkimError naming the key that failed.

    `key_file` is read relative to `base_dir` (the policy file's folder), `key_secret`
    through `load_secret` (secret id -> PEM). Every key is loaded now, at startup
    or policy reload, so a bad key stops the reload instead of failing per message.
    """
    signers: list[DkimSigner] = []
    for key in keys:
        where = f"DKIM key {key.domain} (selector {key.selector})"
        if key.key_file is not None:
            path = Path(key.key_file)
            if base_dir is not None:
                path = base_dir / path
            source = f"key_file {path}"
            try:
                pem = path.read_bytes()
            except OSError as e:
                raise DkimError(f"{where}: cannot read {source}: {e.strerror or e}") from e
        elif key.key_secret is not None:
            source = f"key_secret {key.key_secret}"
            if load_secret is None:
                raise DkimError(f"{where}: {source} needs a secret reader, and none was given")
            try:
                secret = load_secret(key.key_secret)
            except Exception as e:  # any reader failure (missing secret, access denied, ...)
                raise DkimError(f"{where}: cannot read {source}: {e}") from e
            pem = secret.encode("utf-8") if isinstance(secret, str) else secret
        else:
            raise DkimError(f"{where}: set key_file or key_secret")
        try:
            signers.append(DkimSigner.from_pem(
                domain=key.domain, selector=key.selector, algorithm=key.algorithm, pem=pem,
                headers=key.headers or DEFAULT_SIGNED_HEADERS,
            ))
        except DkimError as e:
            raise DkimError(f"{where} from {source}: {e}") from e
    return SignerSet(signers)
