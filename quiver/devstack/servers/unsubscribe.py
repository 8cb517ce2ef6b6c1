"""The one-click unsubscribe endpoint on loopback HTTP, for the local stack.

In AWS a function URL carries requests to the Lambda; here the local stack's
loopback server (loopback_http.py) hands them to the same `Unsubscriber`, with the
same stores (DynamoDB and SQS on moto's server) and a key ring file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from quiver.devstack import moto_server
from quiver.devstack.servers.loopback_http import LoopbackHttp, plain
from quiver.returnpath.keys import load_key_ring
from quiver.returnpath.refresh import CachedRing
from quiver.settings import Deployment
from quiver.storage.aws import BotoEventSink
from quiver.storage.dynamo import DynamoSuppression
from quiver.unsubscribe import Unsubscriber
from quiver.unsubscribe.service import MAX_BODY

PATH_PREFIX = "/u/"


def local_unsubscriber(*, endpoint: str, deployment: Deployment, key_file: Path) -> Unsubscriber:
    """The Unsubscriber the Lambda would build, on moto's server at `endpoint` and the
    key ring in `key_file` (re-read as the Lambda re-reads its secret)."""
    return Unsubscriber(
        keys=CachedRing(lambda: load_key_ring(key_file=str(key_file))),
        suppression=DynamoSuppression(moto_server.client(endpoint, "dynamodb"),
                                      deployment.suppression_table),
        events=BotoEventSink(moto_server.client(endpoint, "sqs"), deployment.events_queue_url),
    )


class UnsubscribeHttp:
    """Serves GET and POST /u/<token> on `host`, a free port unless one is given."""

    def __init__(self, unsubscriber: Unsubscriber, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._unsubscriber = unsubscriber
        self._http = LoopbackHttp(self._answer, name="quiver-local-unsubscribe",
                                  max_body=MAX_BODY, host=host, port=port)
        self.address = self._http.address

    @property
    def url(self) -> str:
        """The base URL a policy's `url` names (local_only policies may use http)."""
        return f"{self._http.base_url}{PATH_PREFIX}"

    def stop(self) -> None:
        self._http.stop()

    async def _answer(self, method: str, path: str, fields: Mapping[str, str],
                      body: bytes) -> tuple[int, dict[str, str], bytes]:
        if not path.startswith(PATH_PREFIX):
            return plain(404, "not found")
        response = await self._unsubscriber.handle(
            method=method, token=path[len(PATH_PREFIX):].rstrip("/"), body=body,
            content_type=fields.get("content-type"))
        return response.status, dict(response.headers), response.body.encode("utf-8")
