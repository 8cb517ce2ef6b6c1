"""One-click unsubscribe endpoint (RFC 8058) behind a Lambda function URL.

Thin by design: it reads the HTTP request from the function URL's event (payload
format 2.0), hands method, token and body to `quiver.unsubscribe.Unsubscriber`,
and returns its page. GET shows a confirmation page and changes nothing; POST
with `List-Unsubscribe=One-Click` suppresses and records one `unsubscribed`
event, however many times it arrives.
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

from quiver.settings import UNSUBSCRIBE_VARIABLES, deployment_from_env
from quiver.unsubscribe import Unsubscriber
from quiver.unsubscribe.service import MAX_BODY

logger = Logger(service="quiver-unsubscribe")


@functools.cache
def unsubscriber() -> Unsubscriber:
    """The function's one Unsubscriber, built on the cold start's first invocation (the
    module imports without settings; a missing setting fails invocations naming it)."""
    deployment = deployment_from_env(os.environ, required=UNSUBSCRIBE_VARIABLES)
    session = boto3.session.Session(region_name=deployment.region)
    return Unsubscriber.from_deployment(deployment, session=session)


def request_of(event: dict[str, Any]) -> tuple[str, str, bytes, str | None]:
    """(method, token, body, content type) from a function URL event: the token is
    the path's last segment (/u/<token>)."""
    http = event.get("requestContext", {}).get("http", {})
    method = str(http.get("method", "GET"))
    path = str(event.get("rawPath") or http.get("path") or "")
    token = path.rstrip("/").rsplit("/", 1)[-1]
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    text = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            # Decoded only up to what could be a one-click body: the rest is not read.
            body = base64.b64decode(text[:(MAX_BODY + 1) * 4 // 3 + 4], validate=True)
        except (binascii.Error, ValueError):
            body = b""
    else:
        body = text.encode("utf-8", "replace")
    return method, token, body, headers.get("content-type")


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    method, token, body, content_type = request_of(event)
    response = asyncio.run(unsubscriber().handle(method=method, token=token, body=body,
                                                 content_type=content_type))
    logger.info("unsubscribe request", extra={
        "method": method, "outcome": response.outcome, "status": response.status,
        "refusal": response.refusal.reason if response.refusal else None})
    return {"statusCode": response.status, "headers": dict(response.headers),
            "body": response.body}
