"""An intake built from a Deployment, and its work on one intake-queue message.

`InboundProcessor.from_deployment` is what the bounce and FBL Lambdas build at cold
start; the local stack and the integration tests build the same one against moto's
server. Its `handle` reads each object an S3 notification names from the inbound
bucket, runs the intake on it, counts the outcome and logs it; a store failure
raises, so only that SQS message is retried (and, after its retries, dead-lettered).
The bounce Lambda's also reads the unsubscribe requests mailed to the policy's
mailto addresses (quiver.intake.by_recipient), with the same key ring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

from quiver.intake.bounce import BounceIntake
from quiver.intake.by_recipient import ByRecipient
from quiver.intake.counts import IntakeCounts, Kind, Outcome
from quiver.intake.mail import InboundMail
from quiver.intake.s3_event import InboundEventError, object_refs
from quiver.intake.unsubscribe import MailtoIntake
from quiver.policy.model import Policy
from quiver.policy.source import read_policy
from quiver.returnpath import KeyRing, KeyRingError, ReturnPathVerifier, load_key_ring
from quiver.returnpath.refresh import CachedRing
from quiver.settings import Deployment
from quiver.storage.aws import BotoEventSink, secret_reader
from quiver.storage.base import EventSink, StorageError, SuppressionStore
from quiver.storage.boto_calls import call_sync, error_code
from quiver.storage.dynamo import DynamoReturnPaths, DynamoSuppression

_log = logging.getLogger("quiver.intake")

IntakeKind = Literal["bounce", "complaint"]
# Seconds each step of a complaint's provider lookup (MX, then its hosts' addresses)
# may take before the complaint counts as provider `none`. It only names a metric's
# dimension, and ten objects share one invocation's minute with their DKIM lookups;
# a resolver that answers at all answers in milliseconds.
PROVIDER_LOOKUP_TIMEOUT = 2.0


class SqsMessage(Protocol):
    """What the intake reads of an SQS record (Powertools' SQSRecord has it)."""

    @property
    def body(self) -> str: ...


class Intake(Protocol):
    """BounceIntake, ComplaintIntake, ByRecipient: what one object becomes."""

    @property
    def kind(self) -> Kind: ...

    @property
    def max_bytes(self) -> int: ...

    async def process(self, mail: InboundMail) -> Outcome: ...


class IntakeLog(Protocol):
    """A `logging.Logger` or Powertools' `Logger`."""

    def info(self, msg: str, *, extra: dict[str, object]) -> None: ...


def _no_ring() -> KeyRing:
    raise KeyRingError("policy return_path names no bounce domain")


def key_ring_from_policy(policy: Policy, *,
                         read_secret: Callable[[str], bytes] | None) -> CachedRing | None:
    """The return-path key ring (it signs return paths and unsubscribe tokens), read
    now: a ring that cannot be read stops the start. None when the policy names none."""
    section = policy.return_path
    if section.key_secret is None and section.key_file is None:
        return None

    def load() -> KeyRing:
        return load_key_ring(key_secret=section.key_secret, key_file=section.key_file,
                             read_secret=read_secret)

    keys = CachedRing(load)
    keys()
    return keys


def verifier_from_policy(policy: Policy, *, store: DynamoReturnPaths,
                         read_secret: Callable[[str], bytes] | None = None,
                         keys: Callable[[], KeyRing] | None = None) -> ReturnPathVerifier:
    """A verifier for the policy's bounce domains, with `keys` or the ring the policy
    names. Without bounce domains, every address is refused (wrong_domain) before a
    key is needed."""
    section = policy.return_path
    if not section.enabled:
        _log.warning("policy return_path names no bounce domain: every inbound report "
                     "will be refused (wrong_domain)")
        return ReturnPathVerifier(keys=_no_ring, store=store, bounce_domains={})
    ring = keys if keys is not None else key_ring_from_policy(policy,
                                                              read_secret=read_secret)
    # An enabled section has a key (quiver.policy.return_path refuses one without).
    return ReturnPathVerifier(keys=ring or _no_ring, store=store,
                              bounce_domains=section.bounce_domains())


class InboundProcessor:
    def __init__(self, *, intake: Intake, s3: Any, bucket: str,
                 counts: IntakeCounts | None = None, log: IntakeLog = _log) -> None:
        self.intake = intake
        self._s3 = s3
        self.bucket = bucket
        self.counts = counts or IntakeCounts()
        self._log = log

    @classmethod
    def from_deployment(
        cls, kind: IntakeKind, deployment: Deployment, *, session: Any,
        nameservers: list[tuple[str, int]] | None = None, log: IntakeLog = _log,
    ) -> InboundProcessor:
        policy, _, _ = read_policy(deployment.policy_spec, ssm=lambda: session.client("ssm"),
                                   s3=lambda: session.client("s3"))
        ddb = session.client("dynamodb")
        store = DynamoReturnPaths(ddb, deployment.finals_table)
        reader = secret_reader(session) if policy.return_path.key_secret else None
        addresses = policy.unsubscribe.mailto_addresses() if kind == "bounce" else ()
        # One ring for both kinds of token; read only when something will verify one.
        keys = key_ring_from_policy(policy, read_secret=reader) if (
            policy.return_path.enabled or addresses) else None
        verifier = verifier_from_policy(policy, store=store, keys=keys)
        suppression: SuppressionStore = DynamoSuppression(ddb, deployment.suppression_table)
        sink: EventSink = BotoEventSink(session.client("sqs"), deployment.events_queue_url)
        intake: Intake
        if kind == "bounce":
            intake = BounceIntake(verifier=verifier, suppression=suppression, sink=sink)
            # A policy with mailto addresses names a ring (quiver.policy.unsubscribe).
            if addresses and keys is not None:
                intake = ByRecipient(bounce=intake, mailto=MailtoIntake(
                    addresses=addresses, keys=keys, suppression=suppression, sink=sink))
        else:
            # Imported here: the complaint intake needs dkimpy and dnspython, which only
            # the FBL Lambda carries (cdk/lambda_code.py), not the bounce one.
            from quiver.intake.complaint import ComplaintIntake, source_by_ip
            from quiver.routing.mx import MxResolver
            from quiver.routing.providers import ProviderMatcher
            from quiver.routing.txt import TxtResolver

            # The sender's routes and provider patterns, so a complaint names the
            # provider its delivery did (quiver.intake.complaint).
            routes = MxResolver(nameservers=nameservers, timeout=PROVIDER_LOOKUP_TIMEOUT,
                                providers=ProviderMatcher(policy.providers),
                                routes=dict(policy.delivery.routes))
            intake = ComplaintIntake(
                verifier=verifier, suppression=suppression, sink=sink, policy=policy.feedback,
                dnsfunc=TxtResolver(nameservers=nameservers).dkimpy_dnsfunc,
                provider_of=routes.provider, source_of=source_by_ip(policy.sources))
        return cls(intake=intake, s3=session.client("s3"), bucket=deployment.inbound_bucket,
                   log=log)

    def handle(self, record: SqsMessage) -> list[Outcome]:
        """Process every object one intake-queue message names. Raises
        InboundEventError on a message that is not an S3 notification of this bucket,
        StorageError when a store fails: either way only this message is retried."""
        outcomes = []
        for ref in object_refs(record.body):
            if ref.bucket != self.bucket:
                raise InboundEventError(f"object s3://{ref.bucket}/{ref.key} is not in the "
                                        f"inbound bucket {self.bucket}")
            mail = self._read(ref.key)
            outcome = mail if isinstance(mail, Outcome) else asyncio.run(
                self.intake.process(mail))
            self.counts.count(outcome)
            self._log.info("inbound mail", extra={
                "object": f"s3://{ref.bucket}/{ref.key}", "kind": outcome.kind,
                "outcome": outcome.outcome, "reason": outcome.reason,
                "detail": outcome.detail[:300], "events": outcome.events,
                "suppressed": outcome.suppressed})
            outcomes.append(outcome)
        return outcomes

    def _read(self, key: str) -> InboundMail | Outcome:
        kind = self.intake.kind
        try:
            response = call_sync(self._s3.get_object, Bucket=self.bucket, Key=key)
        except StorageError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                # Expired or removed before it was read (a late replay from the DLQ):
                # there is nothing left to act on, and retrying will not bring it back.
                return Outcome(kind, "ignored", "missing_object", key)
            raise
        size = int(response.get("ContentLength", 0))
        if size > self.intake.max_bytes:
            response["Body"].close()
            return Outcome(kind, "ignored", "too_large",
                           f"{size} bytes; the bound is {self.intake.max_bytes}")
        raw: bytes = response["Body"].read()
        return InboundMail(bucket=self.bucket, key=key, raw=raw,
                           stored_at=response["LastModified"].timestamp())
