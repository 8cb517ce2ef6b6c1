"""The HTTP injection API on loopback, for the local stack.

In AWS, API Gateway carries requests to the ingress Lambda; here the loopback server
hands them to the same `IngressService`, built by the same function
(quiver.ingress_http.build) over moto's server: the policy from its SSM parameter,
the tenant keys and replay records in its DynamoDB, the outbound queue and spill
bucket in its SQS and S3. Only the Bearer-key route is served: SigV4 is API
Gateway's to check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from quiver.devstack import moto_server
from quiver.devstack.servers.loopback_http import LoopbackHttp
from quiver.ingress_http.build import ingress_from_deployment
from quiver.ingress_http.service import MAX_BODY, PATH, IngressService, Request
from quiver.settings import Deployment

# What API Gateway's HTTP API lets through (its payload limit, 10 MB).
MAX_REQUEST = 10 * 1024 * 1024


class _MotoSession:
    """What the builder asks of a boto3 session: clients, here on moto's server."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    def client(self, service: str, **kwargs: Any) -> Any:
        return moto_server.session(self._endpoint).client(
            service, endpoint_url=self._endpoint, **kwargs)


def local_ingress(*, endpoint: str, deployment: Deployment) -> IngressService:
    return ingress_from_deployment(deployment, session=_MotoSession(endpoint), clock=time.time)


class IngressHttp:
    """Serves POST /v1/messages on `host`, a free port unless one is given."""

    def __init__(self, service: IngressService, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        assert MAX_REQUEST <= MAX_BODY
        self._service = service
        self._http = LoopbackHttp(self._answer, name="quiver-local-ingress",
                                  max_body=MAX_REQUEST, host=host, port=port)
        self.address = self._http.address

    @property
    def url(self) -> str:
        """Where to POST batches."""
        return f"{self._http.base_url}{PATH}"

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def stop(self) -> None:
        self._http.stop()

    async def _answer(self, method: str, path: str, fields: Mapping[str, str],
                      body: bytes) -> tuple[int, dict[str, str], bytes]:
        response = await self._service.handle(Request(method=method, path=path,
                                                      headers=fields, body=body))
        return (response.status, {"Content-Type": "application/json"},
                response.json().encode("utf-8"))
