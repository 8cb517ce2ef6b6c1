"""DKIM signing (RFC 6376; ed25519-sha256 per RFC 8463), relaxed/relaxed, on the send path.

    signers = signers_from_policy(policy.dkim, load_secret=read_secret, base_dir=policy_dir)
    # One DKIM-Signature per key of the domain (RSA and ed25519 side by side).
    signatures = b"".join(s.sign(message) for s in signers.for_domain(from_domain))
    message = signatures + message
"""

from typing import TYPE_CHECKING, Any

from quiver.dkim.errors import DkimError
from quiver.dkim.keys import dns_txt_value, generate_private_key
from quiver.dkim.signer import DEFAULT_SIGNED_HEADERS, DkimSigner

if TYPE_CHECKING:
    from quiver.dkim.keyring import SignerSet, signers_from_policy


def __getattr__(name: str) -> Any:
    # The key ring reads policy, and the policy package pulls in DNS and asyncio: the
    # signing worker process (quiver.dkim.worker) imports this package without them,
    # 25 MB resident instead of 37.
    if name in ("SignerSet", "signers_from_policy"):
        from quiver.dkim import keyring

        return getattr(keyring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_SIGNED_HEADERS", "DkimError", "DkimSigner", "SignerSet", "dns_txt_value",
    "generate_private_key", "signers_from_policy",
]
