"""HTTP injection API (`POST /v1/messages`) behind API Gateway's HTTP API.

Thin by design: it reads the request from the event (payload format 2.0: method,
path, headers, body, and the IAM authorizer's caller on the SigV4 route), hands it
to `quiver.ingress_http.IngressService`, and returns its JSON answer. A replayed
(tenant, id) enqueues once however often the request arrives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from quiver.ingress_http.build import ingress_from_deployment
from quiver.ingress_http.service import IngressService, Request
from quiver.settings import INGRESS_VARIABLES, deployment_from_env

logger = Logger(service="quiver-ingress-http")


@functools.cache
def ingress() -> IngressService:
    """The function's one IngressService, built on the cold start's first invocation
    (the module imports without settings; a missing setting fails invocations naming it)."""
    deployment = deployment_from_env(os.environ, required=INGRESS_VARIABLES)
    session = boto3.session.Session(region_name=deployment.region)
    return ingress_from_deployment(deployment, session=session)


def request_of(event: dict[str, Any]) -> Request:
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    text = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            body = b""
    else:
        body = text.encode("utf-8", "replace")
    iam = (context.get("authorizer") or {}).get("iam") or {}
    caller = iam.get("userArn")
    return Request(method=str(http.get("method", "")),
                   path=str(event.get("rawPath") or http.get("path") or ""),
                   headers=headers, body=body,
                   iam_caller=str(caller) if caller else None)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = request_of(event)
    response = asyncio.run(ingress().handle(request))
    logger.info("ingress request", extra={
        "status": response.status, "accepted": response.body.get("accepted"),
        "refused": response.body.get("refused"), "error": response.body.get("error")})
    return {"statusCode": response.status,
            "headers": {"Content-Type": "application/json"}, "body": response.json()}
