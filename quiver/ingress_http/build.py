"""The one IngressService a process builds: the Lambda at cold start, the local stack
at start. The policy's tenants and content limits are re-read every REFRESH seconds
(a new tenant or domain applies within a minute, no deploy); a read that fails
keeps the last good policy, and is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.config import Config

from quiver.client import QuiverClient
from quiver.ingress_http.idempotency import DynamoReplays
from quiver.ingress_http.service import IngressService, IngressSettings
from quiver.policy import Policy, PolicyError
from quiver.policy.source import read_policy
from quiver.settings import Deployment
from quiver.storage.base import StorageError
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.tenants.keys import TenantKeys

REFRESH = 60.0
POOL = 16
_log = logging.getLogger(__name__)


def settings_of(policy: Policy) -> IngressSettings:
    return IngressSettings(tenants=policy.tenants,
                           max_message_size=policy.content.max_message_size,
                           long_lines=policy.content.long_lines)


class RefreshingSettings:
    def __init__(self, read: Callable[[], Policy], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._settings = settings_of(read())
        self._read_at = clock()

    def __call__(self) -> IngressSettings:
        if self._clock() - self._read_at >= REFRESH:
            self._read_at = self._clock()
            try:
                self._settings = settings_of(self._read())
            except (PolicyError, StorageError, OSError) as exc:
                _log.warning("policy re-read failed; the last good one stays: %s", exc)
        return self._settings


def ingress_from_deployment(deployment: Deployment, *, session: Any,
                            clock: Callable[[], float] = time.time) -> IngressService:
    def read() -> Policy:
        return read_policy(deployment.policy_spec, ssm=lambda: session.client("ssm"),
                           s3=lambda: session.client("s3"))[0]

    settings = RefreshingSettings(read)
    first = settings()
    # As many connections as the AWS thread pool runs calls: a batch's claims and
    # sends run side by side.
    config = Config(max_pool_connections=POOL)
    ddb = session.client("dynamodb", config=config)
    client = QuiverClient(sqs=session.client("sqs", config=config),
                          s3=session.client("s3", config=config),
                          queue_url=deployment.outbound_queue_url,
                          spill_bucket=deployment.spill_bucket,
                          max_message_size=first.max_message_size,
                          long_lines=first.long_lines)
    return IngressService(
        settings=settings, keys=TenantKeys(DynamoTenantKeys(ddb, deployment.tenant_keys_table)),
        replays=DynamoReplays(ddb, deployment.idempotency_table), client=client, clock=clock)
