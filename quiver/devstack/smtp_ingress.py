"""The SMTP submission listener on loopback, for the local stack: STARTTLS with a
certificate from the local CA, AUTH with the demo tenant's key (created in the
stack's key table and written to env.sh), the production listener code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver.client import QuiverClient
from quiver.devstack.demo_tenant import DEMO_TENANT
from quiver.devstack.loop_thread import LoopThread
from quiver.ingress.smtp_server import ListenerConfig, SmtpListener
from quiver.ingress.smtp_tls import context_from_files
from quiver.ingress.tenant_gate import PolicyTenantGate
from quiver.policy.tenants import TenantsPolicy
from quiver.storage.dynamo_keys import DynamoTenantKeys
from quiver.tenants.keys import TenantKeys

HOSTNAME = "localhost"


@dataclass
class LocalSmtpIngress:
    listener: SmtpListener
    thread: LoopThread
    tenant: str
    key: str
    ca_file: Path

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.address

    def env(self) -> dict[str, str]:
        """What a client of this listener needs (env.sh)."""
        host, port = self.address
        return {"QUIVER_SMTP_HOST": host, "QUIVER_SMTP_PORT": str(port),
                "QUIVER_SMTP_USER": self.tenant, "QUIVER_SMTP_PASSWORD": self.key,
                "QUIVER_SMTP_CA_FILE": str(self.ca_file)}

    def stop(self) -> None:
        try:
            self.thread.run(self.listener.stop(timeout=5), timeout=15)
        finally:
            self.thread.halt(timeout=10)


def start_smtp_ingress(*, client: QuiverClient, tenants: TenantsPolicy, dynamodb: Any,
                       keys_table: str, cert: Path, key: Path, ca_file: Path
                       ) -> LocalSmtpIngress:
    keys = TenantKeys(DynamoTenantKeys(dynamodb, keys_table))
    thread = LoopThread("local-smtp-ingress")
    try:
        demo_key, _ = thread.run(keys.create(tenant=DEMO_TENANT, who="quiver local",
                                             now=time.time()), timeout=30)
        listener = SmtpListener(
            ListenerConfig(host="127.0.0.1", port=0, hostname=HOSTNAME,
                           tls=context_from_files(cert, key)),
            client=client, gate=PolicyTenantGate(tenants, keys))
        thread.run(listener.start(), timeout=10)
    except BaseException:
        thread.halt(timeout=10)
        raise
    return LocalSmtpIngress(listener, thread, DEMO_TENANT, demo_key, ca_file)
