"""A lean asyncio DynamoDB client for the sender's hot path: the suppression check.

Every message's recipients are looked up in the suppression table, and boto3
spends 1.4-2.3 ms of CPU on a BatchGetItem of 10-50 addresses (request model,
hooks, a thread-pool hop each way), this client 0.2-0.4 ms
(bench/suppression_cost.py, both on kept-alive connections). DynamoDB speaks
the same JSON protocol as SQS (`POST /`, an `X-Amz-Target` naming the action,
JSON in and out), so this client reuses the lean SQS client's connection pool
(`HttpPool`: bounded sizes, times and attempts), its SigV4 signer and its error
parsing; the request and answer bodies are exactly boto3's low-level ones, so
callers build and read the same shapes.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from quiver.speedups import loads
from quiver.storage.base import StorageError
from quiver.storage.sigv4 import SigV4Signer, amz_date
from quiver.storage.sqs_lean import RETRYABLE_CODES, HttpPool, SqsError, parse_error

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "DynamoDB_20120810."
USER_AGENT = "quiver-dynamo-lean/1"
# DynamoDB answers a batch of 100 small items well within this; a stuck call is
# a failure for the caller's policy ([suppression] on_error) to handle.
READ_TIMEOUT = 10.0
ATTEMPTS = 3
BACKOFF = 0.05
# Throttling is a 400 in DynamoDB, with these codes.
_RETRYABLE = RETRYABLE_CODES | {"ProvisionedThroughputExceededException"}


def _safe(value: str, what: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise StorageError(f"{what} contains a line break or NUL")
    return value


class LeanDynamoClient:
    """Signed DynamoDB JSON calls to one endpoint (`endpoint_url`, e.g. the boto3
    client's `meta.endpoint_url`, so AWS_ENDPOINT_URL applies as it does there)."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        credentials: Any,
        max_connections: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if credentials is None:
            raise ValueError("no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "a profile, or run with a task role")
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default = (parts.scheme, port) in (("https", 443), ("http", 80))
        self._host_header = parts.hostname if default else f"{parts.hostname}:{port}"
        context = None
        if parts.scheme == "https":
            context = ssl_context or ssl.create_default_context()
        self._pool = HttpPool(host=parts.hostname, port=port, ssl_context=context,
                              max_connections=max_connections)
        self._credentials = credentials
        self._signer = SigV4Signer(region=region, service="dynamodb")

    async def _frozen(self) -> Any:
        creds = self._credentials
        try:
            refresh_needed = getattr(creds, "refresh_needed", None)
            if refresh_needed is not None and refresh_needed():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, creds.get_frozen_credentials)
            return creds.get_frozen_credentials()
        except Exception as exc:  # botocore raises several unrelated types here
            raise StorageError(f"cannot read AWS credentials: {exc}") from exc

    async def _request(self, action: str, body: bytes) -> bytes:
        frozen = await self._frozen()
        date = amz_date()
        target = TARGET_PREFIX + action
        signed = {"content-type": JSON_CONTENT_TYPE, "host": self._host_header,
                  "x-amz-date": date, "x-amz-target": target}
        token = frozen.token
        if token:
            signed["x-amz-security-token"] = _safe(token, "the session token")
        authorization = self._signer.authorization(
            access_key=_safe(frozen.access_key, "the access key id"),
            secret_key=frozen.secret_key, headers=signed, body=body, date=date)
        token_line = f"X-Amz-Security-Token: {token}\r\n" if token else ""
        head = (f"POST / HTTP/1.1\r\nHost: {self._host_header}\r\n"
                f"Content-Type: {JSON_CONTENT_TYPE}\r\nX-Amz-Target: {target}\r\n"
                f"X-Amz-Date: {date}\r\n{token_line}Authorization: {authorization}\r\n"
                f"User-Agent: {USER_AGENT}\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def call(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The answer of `action` as boto3's low-level client returns it; StorageError
        after ATTEMPTS tries of faults that may heal, at once for the others."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        last = StorageError(f"{action}: not tried")
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0.5, 1.0) * BACKOFF * 2**attempt)
            try:
                response = await self._pool.request(await self._request(action, body),
                                                     timeout=READ_TIMEOUT)
            except TimeoutError:
                last = StorageError(f"{action}: no answer within {READ_TIMEOUT:g} s")
                continue
            except StorageError as exc:  # connect, reset, malformed HTTP
                last = StorageError(f"{action}: {exc}")
                continue
            if response.status == 200:
                try:
                    data = loads(response.body)
                except (ValueError, RecursionError) as exc:
                    raise StorageError(f"{action}: answer is not JSON: {exc}") from None
                if not isinstance(data, dict):
                    raise StorageError(f"{action}: answer is not a JSON object")
                return data
            error: SqsError = parse_error(action=action, status=response.status,
                                          body=response.body)
            if not (error.status >= 500 or error.status == 429 or error.code in _RETRYABLE):
                raise error
            last = error
        raise StorageError(f"{last} (after {ATTEMPTS} tries)") from last

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (a kept pool opens few; benchmarks print it)."""
        return self._pool.opened

    async def close(self) -> None:
        await self._pool.close()
