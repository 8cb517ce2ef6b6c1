"""The HTTP ingress's SigV4 route: the caller's role (an assumed-role session or the
role) must be listed for the tenant it names; the Lambda event's IAM caller reaches
the service. Refusals happen before the body is read or anything is enqueued."""

from __future__ import annotations

import asyncio
import json

from functions.ingress_http.handler import request_of
from quiver.client import QuiverClient
from quiver.ingress_http.idempotency import MemoryReplays
from quiver.ingress_http.service import IAM_PATH, IngressService, IngressSettings, role_of
from quiver.policy import parse_policy
from quiver.storage.memory import MemoryTenantKeys
from quiver.tenants.keys import TenantKeys

POLICY = """
default_pool = "p"
[sources.s1]
ip = "192.0.2.1"
ehlo = "o1.example.com"
[pools.p]
sources = ["s1"]
[tenants.acme]
domains = ["acme.test"]
iam_roles = ["arn:aws:iam::123456789012:role/apps/acme-mailer"]
"""


def test_role_of_reads_assumed_role_sessions_and_roles() -> None:
    assert role_of("arn:aws:sts::123456789012:assumed-role/acme-mailer/i-0abc") == \
        "arn:aws:iam::123456789012:role/acme-mailer"
    assert role_of("arn:aws:iam::123456789012:role/x") == "arn:aws:iam::123456789012:role/x"
    assert role_of("arn:aws:iam::123456789012:user/bob") is None
    assert role_of("nonsense") is None


def service() -> IngressService:
    policy = parse_policy(POLICY)
    # No queue is reached by these requests: the client's AWS clients are never called.
    client = QuiverClient(sqs=None, s3=None, queue_url="", spill_bucket="")
    return IngressService(
        settings=lambda: IngressSettings(tenants=policy.tenants, max_message_size=1 << 20),
        keys=TenantKeys(MemoryTenantKeys()), replays=MemoryReplays(), client=client,
        clock=lambda: 1_790_000_000.0)


def event(caller: str | None, tenant: str) -> dict[str, object]:
    context: dict[str, object] = {"http": {"method": "POST", "path": IAM_PATH}}
    if caller:
        context["authorizer"] = {"iam": {"userArn": caller}}
    return {"rawPath": IAM_PATH, "requestContext": context,
            "headers": {"X-Quiver-Tenant": tenant, "Content-Type": "application/json"},
            "body": json.dumps({"messages": "not a list"})}


def test_the_sigv4_route_takes_only_a_role_listed_for_the_tenant() -> None:
    svc = service()
    listed = "arn:aws:sts::123456789012:assumed-role/acme-mailer/session"
    # Listed: past auth, to the body (which is not a batch: 400).
    assert asyncio.run(svc.handle(request_of(event(listed, "acme")))).status == 400
    for caller, tenant in ((listed, "shop"),
                           ("arn:aws:sts::999999999999:assumed-role/acme-mailer/s", "acme"),
                           ("arn:aws:sts::123456789012:assumed-role/other/s", "acme"),
                           (None, "acme")):
        response = asyncio.run(svc.handle(request_of(event(caller, tenant))))
        assert response.status == 403, (caller, tenant)


def test_the_key_route_wants_a_bearer_key() -> None:
    svc = service()
    e = event(None, "acme")
    e["rawPath"] = "/v1/messages"
    assert asyncio.run(svc.handle(request_of(e))).status == 401
