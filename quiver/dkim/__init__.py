"""DKIM signing (RFC 6376; ed25519-sha256 per RFC 8463), relaxed/relaxed, on the send path.

    signers = signers_from_policy(policy.dkim, load_secret=read_secret, base_dir=policy_dir)
    # One DKIM-Signature per key of the domain (RSA and ed25519 side by side).
    signatures = b"".join(s.sign(message) for s in signers.for_domain(from_domain))
    message = signatures + message
"""

from quiver.dkim.errors import DkimError
from quiver.dkim.keyring import SignerSet, signers_from_policy
from quiver.dkim.keys import dns_txt_value, generate_private_key
from quiver.dkim.signer import DEFAULT_SIGNED_HEADERS, DkimSigner

__all__ = [
    "DEFAULT_SIGNED_HEADERS", "DkimError", "DkimSigner", "SignerSet", "dns_txt_value",
    "generate_private_key", "signers_from_policy",
]
