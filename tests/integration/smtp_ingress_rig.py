"""The SMTP ingress on loopback against moto's server: a listener on its own loop
thread, the outbound queue to read back what it enqueued."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiver import envelope as envelope_mod
from quiver.client import QuiverClient
from quiver.devstack import moto_server
from quiver.devstack.loop_thread import LoopThread
from quiver.devstack.servers.tls import issue_cert, make_local_ca
from quiver.ingress.smtp_server import ListenerConfig, SmtpListener
from quiver.ingress.tenant_gate import TenantGate
from quiver.settings import Deployment


@dataclass
class Queued:
    envelope: envelope_mod.Envelope
    raw: bytes


@dataclass
class IngressRig:
    root: Path
    moto: moto_server.MotoServer
    deployment: Deployment
    ca_file: Path
    cert: Path
    key: Path
    thread: LoopThread = field(default_factory=lambda: LoopThread("smtp-ingress"))
    listeners: list[SmtpListener] = field(default_factory=list)

    def client(self, **content: Any) -> QuiverClient:
        return QuiverClient(sqs=moto_server.client(self.moto.endpoint, "sqs"),
                            s3=moto_server.client(self.moto.endpoint, "s3"),
                            queue_url=self.deployment.outbound_queue_url,
                            spill_bucket=self.deployment.spill_bucket, **content)

    def server_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def listen(self, *, gate: TenantGate | None = None, client: QuiverClient | None = None,
               clock: Callable[[], float] = time.monotonic, **config: Any) -> SmtpListener:
        config.setdefault("tls", self.server_tls())
        listener = SmtpListener(ListenerConfig(hostname="localhost", **config),
                                client=client or self.client(), gate=gate, clock=clock)
        self.thread.run(listener.start(), timeout=10)
        self.listeners.append(listener)
        return listener

    def stop(self, listener: SmtpListener, *, timeout: float = 10.0) -> int:
        self.listeners.remove(listener)
        return self.thread.run(listener.stop(timeout=timeout), timeout=timeout + 10)

    def queued(self) -> list[Queued]:
        """Everything on the outbound queue now (received and deleted)."""
        sqs = moto_server.client(self.moto.endpoint, "sqs")
        s3 = moto_server.client(self.moto.endpoint, "s3")
        out: list[Queued] = []
        while True:
            got = sqs.receive_message(QueueUrl=self.deployment.outbound_queue_url,
                                      MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = got.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                env = envelope_mod.decode(m["Body"])
                if env.raw is not None:
                    raw = env.raw
                else:
                    assert env.raw_s3 is not None
                    bucket, key = envelope_mod.parse_s3_uri(env.raw_s3)
                    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                out.append(Queued(env, raw))
                sqs.delete_message(QueueUrl=self.deployment.outbound_queue_url,
                                   ReceiptHandle=m["ReceiptHandle"])

    def close(self) -> None:
        for listener in list(self.listeners):
            self.stop(listener, timeout=5)
        self.thread.halt(timeout=10)
        self.moto.stop()


@contextmanager
def ingress_rig(root: Path) -> Iterator[IngressRig]:
    (root / "logs").mkdir(parents=True, exist_ok=True)
    moto = moto_server.start_moto(log_dir=root / "logs")
    try:
        deployment = moto_server.create_resources(moto.endpoint)
        ca_file, _ = make_local_ca(root / "ca")
        cert, key = issue_cert(ca_dir=root / "ca", hostnames=["localhost"], ips=["127.0.0.1"],
                               dir=root / "tls")
    except BaseException:
        moto.stop()
        raise
    rig = IngressRig(root, moto, deployment, ca_file, cert, key)
    try:
        yield rig
    finally:
        rig.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
