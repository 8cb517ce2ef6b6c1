"""`POST /v1/messages`: authenticate, validate against the OpenAPI document, render,
check the tenant's domains, claim the replay record, enqueue, answer per message.

Statuses (the document lists them): 200 once the batch is read, whatever each
message's fate (every message has its result); 400 not a batch; 401 no or bad key;
403 a caller that may not inject as the tenant; 405, 404, 413, 415 for the
request itself; 503 when the key store cannot answer. A message is `accepted` only
once SendMessage returned for it.

Each message travels with the envelope id `<tenant>:<id>`: ids are the caller's,
and two tenants may pick the same one, while the sender's final-event claims and
every event key on the envelope id. Events carry it and the tenant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import json
import secrets
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from quiver import envelope as envelope_mod
from quiver.client import OutboundMessage, QuiverClient
from quiver.ingress_http import mime, schema
from quiver.ingress_http.idempotency import ReplayStore
from quiver.policy.tenants import TenantsPolicy, message_refusal
from quiver.storage.base import StorageError
from quiver.storage.boto_calls import aws_executor
from quiver.storage.sqs import chunk, wire_size
from quiver.tenants.keys import TenantKeys

PATH = "/v1/messages"
IAM_PATH = "/iam/v1/messages"
# The most a request may be once decompressed: 500 messages of about 60 KiB each. A
# larger message goes through the SQS client (or SMTP); the bound keeps a gzip bomb
# from taking the function's memory. API Gateway caps what arrives at 10 MB.
MAX_BODY = 32 * 1024 * 1024
TENANT_HEADER = "x-quiver-tenant"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    # lower-case names
    headers: Mapping[str, str]
    body: bytes
    # The SigV4 caller's ARN, as API Gateway's IAM authorizer names it; None without.
    iam_caller: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: dict[str, Any]

    def json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class IngressSettings:
    tenants: TenantsPolicy
    # The policy's `[content]`: the same limits the sender applies.
    max_message_size: int
    long_lines: Any = "reencode"


def _error(status: int, error: str, reason: str) -> Response:
    return Response(status, {"error": error, "reason": reason})


@dataclass
class _Item:
    index: int
    data: dict[str, Any]
    result: dict[str, Any] | None = None
    message: OutboundMessage | None = None
    fingerprint: str = ""
    token: str = ""
    body: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def caller_id(self) -> str | None:
        value = self.data.get("id")
        return value if isinstance(value, str) else None

    def refuse(self, field_name: str, rule: str, reason: str, *,
               retryable: bool = False) -> None:
        self.result = {"index": self.index, "id": self.caller_id, "status": "refused",
                       "field": field_name, "rule": rule, "reason": reason,
                       "retryable": retryable}


def role_of(arn: str) -> str | None:
    """The IAM role ARN behind a caller ARN: an assumed-role session
    (arn:aws:sts::<account>:assumed-role/<name>/<session>) or the role itself."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return None
    partition, service, account, resource = parts[1], parts[2], parts[4], parts[5]
    if service == "sts" and resource.startswith("assumed-role/"):
        name = resource.split("/")[1]
        return f"arn:{partition}:iam::{account}:role/{name}"
    if service == "iam" and resource.startswith("role/"):
        return arn
    return None


def _role_allowed(listed: tuple[str, ...], caller_role: str) -> bool:
    # An assumed-role ARN drops the role's path: compare account and name.
    name = caller_role.rsplit("/", 1)[-1]
    prefix = caller_role.split(":role/", 1)[0]
    return any(r.split(":role/", 1)[0] == prefix and r.rsplit("/", 1)[-1] == name
               for r in listed)


class IngressService:
    def __init__(self, *, settings: Callable[[], IngressSettings], keys: TenantKeys,
                 replays: ReplayStore, client: QuiverClient,
                 clock: Callable[[], float]) -> None:
        self._settings = settings
        self._keys = keys
        self._replays = replays
        self._client = client
        self._clock = clock

    async def handle(self, request: Request) -> Response:
        if request.path not in (PATH, IAM_PATH):
            return _error(404, "not_found", f"no such path; POST {PATH}")
        if request.method != "POST":
            return _error(405, "method_not_allowed", f"POST {PATH}")
        settings = self._settings()
        tenant_or_error = await self._authenticate(request, settings.tenants)
        if isinstance(tenant_or_error, Response):
            return tenant_or_error
        tenant = tenant_or_error
        body = self._body(request)
        if isinstance(body, Response):
            return body
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "bad_request", f"the body is not JSON: {exc}")
        refusal = schema.batch_refusal(data)
        if refusal is not None:
            return _error(400, "bad_request", f"{refusal.field}: {refusal.reason} "
                                              f"({refusal.rule})")
        items = [_Item(index=i, data=m) for i, m in enumerate(data["messages"])]
        self._check(items, tenant, settings)
        await self._claim(items, tenant)
        await self._enqueue([i for i in items if i.result is None], tenant)
        results = [i.result for i in items]
        accepted = sum(1 for r in results if r and r["status"] == "accepted")
        return Response(200, {"accepted": accepted, "refused": len(items) - accepted,
                              "results": results})

    async def _authenticate(self, request: Request, tenants: TenantsPolicy) -> str | Response:
        if request.path == IAM_PATH:
            caller = request.iam_caller
            role = role_of(caller) if caller else None
            if role is None:
                return _error(403, "forbidden", "this path takes SigV4-signed requests "
                              "from an IAM role (API Gateway's IAM authorizer)")
            tenant = request.headers.get(TENANT_HEADER, "")
            section = tenants.tenants.get(tenant)
            if section is None or not _role_allowed(section.iam_roles, role):
                return _error(403, "forbidden", f"role {role} may not inject as tenant "
                              f"{tenant!r} (policy tenants.<name>.iam_roles)")
            return tenant
        authorization = request.headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _error(401, "unauthorized", "send `Authorization: Bearer <tenant key>` "
                          "(`quiver keys create --tenant T`)")
        try:
            tenant_name = await self._keys.verify(key.strip())
        except StorageError:
            return _error(503, "unavailable", "the key store cannot answer; retry")
        if tenant_name is None:
            return _error(401, "unauthorized", "unknown or revoked key")
        if tenant_name not in tenants.tenants:
            return _error(403, "forbidden", f"tenant {tenant_name!r} is not in the policy "
                          "([tenants.<name>])")
        return tenant_name

    @staticmethod
    def _body(request: Request) -> bytes | Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(415, "unsupported_media_type", "send Content-Type: application/json")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            if len(request.body) > MAX_BODY:
                return _error(413, "too_large", f"the body is over {MAX_BODY} bytes")
            return request.body
        if encoding != "gzip":
            return _error(415, "unsupported_media_type",
                          "Content-Encoding may be gzip or identity")
        # Decompressed to one byte past the bound, never further.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(request.body, MAX_BODY + 1)
        except zlib.error as exc:
            return _error(400, "bad_request", f"the body is not gzip: {exc}")
        if len(out) > MAX_BODY:
            return _error(413, "too_large", f"the body is over {MAX_BODY} bytes decompressed")
        if not inflater.eof:
            return _error(400, "bad_request", "the gzip body is truncated")
        return out

    def _check(self, items: list[_Item], tenant: str, settings: IngressSettings) -> None:
        seen: set[str] = set()
        for item in items:
            refusal = schema.message_refusal(item.data)
            if refusal is not None:
                item.refuse(refusal.field, refusal.rule, refusal.reason)
                continue
            data = item.data
            caller_id: str = data["id"]
            if caller_id in seen:
                item.refuse("id", "batch.duplicate_id", "this id is already in the batch")
                continue
            seen.add(caller_id)
            if data.get("tenant", tenant) != tenant:
                item.refuse("tenant", "tenant.mismatch",
                            f"the caller's tenant is {tenant!r}")
                continue
            raw = _raw(item)
            if raw is None:
                continue
            refused = message_refusal(settings.tenants, tenant, envelope_from=data["from"],
                                      raw=raw)
            if refused is not None:
                item.refuse(refused[0], "tenant.domains", refused[1])
                continue
            item.message = OutboundMessage(
                id=f"{tenant}:{caller_id}", sender=data["from"], to=list(data["to"]),
                raw=raw, pool=data.get("pool"), tenant=tenant,
                campaign=data.get("campaign"), meta=data.get("meta") or {},
                expires=data.get("expires"))
            canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
            item.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    async def _claim(self, items: list[_Item], tenant: str) -> None:
        now = self._clock()

        async def claim(item: _Item) -> None:
            item.token = secrets.token_hex(16)
            caller_id = item.data["id"]
            try:
                found = await self._replays.claim(tenant, caller_id,
                                                  fingerprint=item.fingerprint,
                                                  token=item.token, now=now)
            except StorageError:
                item.refuse("id", "idempotency.unavailable",
                            "the replay records cannot answer; retry", retryable=True)
                return
            if found is None:
                return
            if found.fingerprint != item.fingerprint:
                item.refuse("id", "idempotency.mismatch", "this id was used for another "
                            "message in the last day; an id names one message")
            elif found.state == "done" and found.result is not None:
                item.result = {**found.result, "index": item.index, "replayed": True}
            else:
                item.refuse("id", "idempotency.in_progress", "a request with this id is "
                            "being handled; retry to get its result", retryable=True)
            item.token = ""

        await asyncio.gather(*(claim(i) for i in items if i.result is None))

    async def _enqueue(self, items: list[_Item], tenant: str) -> None:
        loop = asyncio.get_running_loop()

        def build(item: _Item) -> None:
            assert item.message is not None
            try:
                item.body = self._client.build(item.message)
            except envelope_mod.EnvelopeError as exc:
                item.refuse(exc.field, "envelope", exc.rule)
            except (BotoCoreError, ClientError) as exc:
                item.refuse("raw", "spill.unavailable", f"the spill bucket: {exc}",
                            retryable=True)

        await asyncio.gather(*(loop.run_in_executor(aws_executor(), build, i)
                               for i in items))
        ready = [i for i in items if i.result is None]
        by_id = {i.data["id"]: i for i in ready}

        def send(batch: list[tuple[str, str]]) -> None:
            try:
                result = self._client.send_built(batch)
            except (BotoCoreError, ClientError) as exc:
                for caller_id, _ in batch:
                    by_id[caller_id].refuse("message", "queue.unavailable",
                                            f"SendMessage failed: {exc}", retryable=True)
                return
            for caller_id, queue_id in result.accepted.items():
                item = by_id[caller_id]
                item.result = {"index": item.index, "id": caller_id, "status": "accepted",
                               "queue_id": queue_id}
            for caller_id, reason in result.failed.items():
                by_id[caller_id].refuse("message", "queue.refused", reason, retryable=True)

        batches = chunk([(i.data["id"], i.body) for i in ready],
                        lambda entry: wire_size(entry[1]))
        await asyncio.gather(*(loop.run_in_executor(aws_executor(), send, b)
                               for b in batches))

        async def settle(item: _Item) -> None:
            assert item.result is not None
            caller_id = item.data["id"]
            try:
                if item.result["status"] == "accepted":
                    await self._replays.complete(tenant, caller_id, token=item.token,
                                                 result=item.result)
                else:
                    await self._replays.release(tenant, caller_id, token=item.token)
            except StorageError:
                # Accepted stays accepted: the record stays pending, and a replay after
                # its lease may enqueue a second copy (quiver/ingress_http/idempotency.py).
                pass

        await asyncio.gather(*(settle(i) for i in items if i.token))


def _raw(item: _Item) -> bytes | None:
    data = item.data
    if "raw" in data:
        try:
            return base64.b64decode(data["raw"], validate=True)
        except (binascii.Error, ValueError) as exc:
            item.refuse("raw", "base64", f"not base64: {exc}")
            return None
    try:
        return mime.build(sender=data["from"], to=data["to"], subject=data["subject"],
                          text=data.get("text"), html=data.get("html"),
                          headers=data.get("headers") or {})
    except mime.MimeError as exc:
        item.refuse(exc.field, "mime", str(exc))
        return None


def gzip_body(data: bytes) -> bytes:
    """A request body compressed as a client sends it (tests, bench, demo)."""
    return gzip.compress(data, mtime=0)
