"""The bounce and FBL intake Lambdas on the local stack, fed by their queues.

As in AWS: SES (here `servers/inbound.py`) writes raw mail to the inbound bucket, S3
notifies the bounce or FBL intake queue, and each queue feeds its function's record
handler, `InboundProcessor.handle`, built by `from_deployment` as the Lambdas build it
(policy from SSM, return-path references and suppression in DynamoDB, events to the
events queue), on moto's server. The EMF counts each batch emits go to a log file, as
CloudWatch would ingest them from the function's output.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from quiver.devstack import moto_server
from quiver.devstack.lambda_pump import LambdaPump
from quiver.intake.build import InboundProcessor, IntakeKind
from quiver.names import resource_names
from quiver.settings import Deployment


class _EndpointSession:
    """The part of a boto3 session the intake builder uses, on moto's endpoint."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint

    def client(self, service: str) -> Any:
        return moto_server.client(self._endpoint, service)


class _IntakePump(LambdaPump):
    def __init__(self, *, processor: InboundProcessor, sqs: Any, queue_url: str, region: str,
                 metrics_log: Path, totals: Counter[tuple[str, str, str]],
                 lock: threading.Lock) -> None:
        super().__init__(sqs=sqs, queue_url=queue_url, region=region,
                         name=f"{processor.intake.kind}-intake-pump",
                         record_handler=processor.handle)
        self._intake = processor
        self._metrics_log = metrics_log
        self._totals = totals
        self._lock = lock

    def _invoke(self, event: dict[str, Any]) -> Any:
        try:
            return super()._invoke(event)
        finally:
            # What the Lambda handler does after each batch (functions/*_intake).
            counts = self._intake.counts
            with self._lock:
                self._totals.update(counts.counts)
            with self._metrics_log.open("a", encoding="utf-8") as out:
                counts.flush(out)


class IntakePumps:
    """Both intakes; `outcomes()` says what they did with each mail so far."""

    def __init__(self, *, endpoint: str, deployment: Deployment,
                 nameservers: list[tuple[str, int]], log_dir: Path) -> None:
        session = _EndpointSession(endpoint)
        sqs = session.client("sqs")
        names = resource_names(account=moto_server.ACCOUNT, region=deployment.region)
        self._totals: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        kinds: tuple[tuple[IntakeKind, str], ...] = (("bounce", names.bounce_queue),
                                                      ("complaint", names.fbl_queue))
        self.pumps = [
            _IntakePump(
                processor=InboundProcessor.from_deployment(
                    kind, deployment, session=session, nameservers=nameservers),
                sqs=sqs, queue_url=sqs.get_queue_url(QueueName=queue)["QueueUrl"],
                region=deployment.region, metrics_log=log_dir / f"{kind}-intake-metrics.log",
                totals=self._totals, lock=self._lock)
            for kind, queue in kinds
        ]

    def start(self) -> None:
        for pump in self.pumps:
            pump.start()

    def stop(self) -> None:
        for pump in self.pumps:
            pump.stop()

    def outcomes(self) -> dict[str, int]:
        """Mail handled so far by `kind/outcome/reason` (e.g. `bounce/accepted/hard`)."""
        with self._lock:
            return {"/".join(key): n for key, n in sorted(self._totals.items())}
