"""How the demo (and the bench) put messages into the local stack: `--via sqs` through
the queue client, `--via http` through the HTTP injection API with the demo tenant's
key, `--via smtp` through the SMTP submission listener (quiver.devstack.demo_smtp).
Each path gives the same messages the same outcome; only the way in differs.

An injector takes a list of messages and returns how many were refused. A new path
is a class here and one line in VIA.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from quiver.client import OutboundMessage, QuiverClient
from quiver.devstack.demo_smtp import SmtpInjector
from quiver.devstack.stack import LocalStack

HTTP_BATCH = 100
HTTP_TIMEOUT = 120.0


class Injector(Protocol):
    def inject(self, messages: Sequence[OutboundMessage]) -> int:
        """Submit `messages`; how many were refused."""
        ...


class SqsInjector:
    def __init__(self, stack: LocalStack) -> None:
        assert stack.deployment is not None
        self._client = QuiverClient(
            sqs=stack.client("sqs"), s3=stack.client("s3"),
            queue_url=stack.deployment.outbound_queue_url,
            spill_bucket=stack.deployment.spill_bucket)

    def inject(self, messages: Sequence[OutboundMessage]) -> int:
        return len(self._client.enqueue_batch(messages).failed)


def http_message(message: OutboundMessage) -> dict[str, Any]:
    """The API's JSON for a rendered message (the tenant is the key's)."""
    out: dict[str, Any] = {"id": message.id, "from": message.sender, "to": list(message.to),
                           "raw": base64.b64encode(message.raw).decode("ascii")}
    for key in ("pool", "campaign", "expires"):
        if (value := getattr(message, key)) is not None:
            out[key] = value
    if message.meta:
        out["meta"] = message.meta
    return out


class HttpInjector:
    """POSTs batches to the loopback API; a message is refused when its result is."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.ingress_server is not None and stack.demo_tenant_key is not None
        self.url = stack.ingress_server.url
        self._key = stack.demo_tenant_key

    @classmethod
    def for_url(cls, url: str, key: str) -> HttpInjector:
        """An injector for an API at `url` with `key`, outside a LocalStack (the bench)."""
        injector = cls.__new__(cls)
        injector.url, injector._key = url, key
        return injector

    def post(self, body: bytes, *, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, Any]]:
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                          timeout=HTTP_TIMEOUT)
        try:
            conn.request("POST", parts.path, body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self._key}",
                **(headers or {})})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def inject(self, messages: Sequence[OutboundMessage]) -> int:
        refused = 0
        for i in range(0, len(messages), HTTP_BATCH):
            part = messages[i:i + HTTP_BATCH]
            status, body = self.post(json.dumps(
                {"messages": [http_message(m) for m in part]}).encode())
            refused += int(body.get("refused", 0)) if status == 200 else len(part)
        return refused


VIA: dict[str, Callable[[LocalStack], Injector]] = {
    "sqs": SqsInjector,
    "http": HttpInjector,
    "smtp": SmtpInjector,
}
