"""AWS Signature Version 4 for small JSON-protocol POSTs to `/` (the SQS hot path).

botocore's `SigV4Auth` spends ~60 µs per request building an `AWSRequest`,
header maps and canonical strings in general form; a request here always has the
same shape (POST, path `/`, no query, a handful of known headers), so the
canonical request is one format string and the derived signing key is cached
per (secret, day): three of the four HMACs happen once a day, not per call.
The output is byte-for-byte what botocore produces for the same request and
instant (tests/unit/test_sqs_lean.py compares the two).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

ALGORITHM = "AWS4-HMAC-SHA256"


def amz_date(now: float | None = None) -> str:
    """`YYYYMMDDTHHMMSSZ` in UTC, the `X-Amz-Date` format."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """Signs POST `/` requests for one (region, service)."""

    def __init__(self, *, region: str, service: str) -> None:
        if not region or not service:
            raise ValueError("SigV4 needs a region and a service name")
        self.region = region
        self.service = service
        self._scope_tail = f"/{region}/{service}/aws4_request"
        # One cached key: it changes only at midnight UTC or when credentials
        # rotate, and a stale entry is simply recomputed.
        self._key_for: tuple[str, str] = ("", "")
        self._key = b""

    def signing_key(self, secret_key: str, day: str) -> bytes:
        if self._key_for != (secret_key, day):
            k_date = _hmac(f"AWS4{secret_key}".encode(), day)
            k_region = _hmac(k_date, self.region)
            k_service = _hmac(k_region, self.service)
            self._key = _hmac(k_service, "aws4_request")
            self._key_for = (secret_key, day)
        return self._key

    def authorization(
        self,
        *,
        access_key: str,
        secret_key: str,
        headers: Mapping[str, str],
        body: bytes,
        date: str,
    ) -> str:
        """The `Authorization` header value for POST `/` with these headers and body.

        `headers` are the headers to sign with lower-case names; they must include
        `host` and `x-amz-date` (== `date`), and `x-amz-security-token` when the
        credentials carry a session token (the token itself is not needed here).
        Values are trimmed as SigV4 requires.
        """
        names = sorted(headers)
        canonical_headers = "".join(
            f"{name}:{' '.join(headers[name].split())}\n" for name in names
        )
        signed_headers = ";".join(names)
        canonical_request = (
            f"POST\n/\n\n{canonical_headers}\n{signed_headers}\n"
            f"{hashlib.sha256(body).hexdigest()}"
        )
        day = date[:8]
        scope = day + self._scope_tail
        string_to_sign = (
            f"{ALGORITHM}\n{date}\n{scope}\n"
            f"{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self.signing_key(secret_key, day), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()
        return (
            f"{ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
