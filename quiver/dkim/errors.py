"""The one error the DKIM signer raises."""

from __future__ import annotations


class DkimError(ValueError):
    """A message that cannot be signed, or a key or setting that cannot sign.

    A ValueError, so a sender that turns bad input into a `rejected` event catches
    it with the rest of the malformed-message errors.
    """
