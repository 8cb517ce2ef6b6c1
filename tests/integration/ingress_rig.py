"""A rig for the HTTP ingress on loopback: moto's server with the stack's resources,
a policy with two tenants in its SSM parameter, a key for each, and the same
IngressService the Lambda builds behind the local stack's loopback server."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quiver.devstack.moto_server import MotoServer, client, create_resources, start_moto
from quiver.devstack.servers.ingress_http import IngressHttp, local_ingress
from quiver.settings import Deployment
from quiver.storage.dynamo_keys import DynamoTenantKeys
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
[tenants.shop]
domains = ["shop.test"]
"""


@dataclass
class IngressRig:
    moto: MotoServer
    deployment: Deployment
    server: IngressHttp
    keys: dict[str, str]

    def post(self, body: bytes, *, key: str | None = None, tenant: str = "acme",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        host, port = self.server.address
        conn = http.client.HTTPConnection(host, port, timeout=120)
        sent = {"Content-Type": "application/json",
                "Authorization": f"Bearer {key or self.keys[tenant]}", **(headers or {})}
        try:
            conn.request("POST", "/v1/messages", body=body, headers=sent)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def drain_queue(self) -> list[dict[str, Any]]:
        """Every message on the outbound queue (bodies), removed from it."""
        sqs = client(self.moto.endpoint, "sqs")
        out: list[dict[str, Any]] = []
        for _ in range(1000):  # bounded: at most 10,000 messages
            got = sqs.receive_message(QueueUrl=self.deployment.outbound_queue_url,
                                      MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                      VisibilityTimeout=600).get("Messages", [])
            if not got:
                return out
            for m in got:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.deployment.outbound_queue_url,
                                   ReceiptHandle=m["ReceiptHandle"])
        return out


def raw_message(sender: str, to: str = "rcpt@alpha.test", subject: str = "hi") -> str:
    text = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Message-ID: <m@x>\r\n\r\nhello\r\n")
    return base64.b64encode(text.encode()).decode()


def batch(*messages: dict[str, Any]) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


@contextmanager
def ingress_rig(tmp: Path) -> Iterator[IngressRig]:
    moto = start_moto(log_dir=tmp)
    try:
        deployment = create_resources(moto.endpoint)
        client(moto.endpoint, "ssm").put_parameter(
            Name=deployment.policy_parameter, Value=POLICY, Type="String", Overwrite=True)
        store = TenantKeys(DynamoTenantKeys(client(moto.endpoint, "dynamodb"),
                                            deployment.tenant_keys_table))
        keys = {t: asyncio.run(store.create(tenant=t, who="test", now=time.time()))[0]
                for t in ("acme", "shop")}
        server = IngressHttp(local_ingress(endpoint=moto.endpoint, deployment=deployment))
        try:
            yield IngressRig(moto, deployment, server, keys)
        finally:
            server.stop()
    finally:
        moto.stop()
