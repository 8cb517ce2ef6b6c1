"""One outbound message from receipt to durable completion.

decode → (postpone if not yet due) → expire? → fetch body → check it and ready it
(quiver.content: size, header, long lines, 8-bit) → DKIM-sign → deliver per domain →
one event per recipient → re-enqueue the pending ones → complete (events accepted,
re-enqueues sent, then delete).
Bad input becomes a `rejected` event and the original goes to the DLQ untouched.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from quiver import envelope as envelope_mod
from quiver.addresses import domain_of
from quiver.bounce import Classifier
from quiver.content import ContentError, prepare, seven_bit
from quiver.dkim import DkimError, SignerSet
from quiver.dkim.pool import SigningPool
from quiver.envelope import Envelope, EnvelopeError
from quiver.events import EventType, Record, make_event, rejected_event, rfc3339_ms
from quiver.message import from_domain
from quiver.policy import Policy
from quiver.sender.complete import Completer, Completion
from quiver.sender.outcome import Attempt
from quiver.sender.transport import Transport
from quiver.storage.base import (
    BodyStore,
    MissingObject,
    Outgoing,
    Received,
    StorageError,
    TooLarge,
)

log = logging.getLogger("quiver.sender")

# SQS DelaySeconds maximum; longer waits hop through the queue in steps.
MAX_DELAY = 900
# A message whose body could not be fetched is retried this soon (transient S3).
BODY_RETRY_VISIBILITY = 30


@dataclass(frozen=True, slots=True)
class _Prepared:
    env: Envelope  # without its inline body
    message: bytes  # DKIM-Signature + body, as it goes on the wire
    signature_length: int
    inline: bool  # the body came inline (raw), not from S3 (raw_s3)
    queued_at: float
    # The 7-bit form for servers without 8BITMIME, when the message has 8-bit data.
    seven_bit: Callable[[], Awaitable[bytes]] | None = None
    # The inline body as received, kept only when it was rewritten (re-encoded, or
    # its line ends): a retry starts from it, not from a rewritten copy that may
    # have grown past what an inline body may be.
    original: bytes | None = None


class _SevenBit:
    """The 7-bit form of a signed 8-bit message (RFC 6152), converted and signed by
    the first connection whose server lacks 8BITMIME, then shared by the others."""

    __slots__ = ("_signature_length", "_signed", "_signer", "_task")

    def __init__(self, signer: Callable[[bytes], Awaitable[bytes]], signed: bytes,
                 signature_length: int) -> None:
        self._signer = signer
        self._signed = signed  # the message as sent with BODY=8BITMIME: no extra copy
        self._signature_length = signature_length
        self._task: asyncio.Future[bytes] | None = None

    async def __call__(self) -> bytes:
        if self._task is None:
            self._task = asyncio.ensure_future(self._convert())
        # Shielded: one waiting connection's cancellation does not cancel the others'.
        return await asyncio.shield(self._task)

    async def _convert(self) -> bytes:
        message = seven_bit(self._signed[self._signature_length:])
        return await self._signer(message) + message


class MessageHandler:
    def __init__(
        self,
        *,
        policy: Policy,
        transport: Transport,
        signers: SignerSet,
        bodies: BodyStore,
        completer: Completer,
        classifier: Classifier,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        finalized: Callable[[str], Awaitable[set[str]]] | None = None,
        signing: SigningPool | None = None,
    ) -> None:
        # None: private-key operations on the event loop thread (tests, tools).
        self._signing = signing
        self._finalized = finalized
        self._policy = policy
        self._transport = transport
        self._signers = signers
        self._bodies = bodies
        self._completer = completer
        self._classifier = classifier
        self._clock = clock
        self._rng = rng or random.Random()

    def apply_policy(self, policy: Policy) -> None:
        """Policy reload: retry schedule and max_age from the next outcome on."""
        self._policy = policy

    async def handle(self, received: Received) -> bool:
        """Process one message; True if it completed (deleted), False if it will return.

        The caller must not keep its own reference to `received`: once the message
        is decoded and signed, only the signed bytes and a body-less receipt are
        held while it waits for delivery (the SQS body would be a third copy).
        """
        message_id = received.message_id
        try:
            prepared = await self._prepare(received)
            if isinstance(prepared, _Prepared):
                receipt = replace(received, body="")
                del received
                completion: Completion | None = await self._deliver(receipt, prepared)
            else:
                completion = prepared
        except StorageError as exc:
            log.warning("message %s left for redelivery: %s", message_id, exc)
            return False
        if completion is None:
            return False
        try:
            await self._completer.complete(completion)
        except StorageError:
            return False
        return True

    async def _prepare(self, received: Received) -> Completion | _Prepared:
        """Decode, check, fetch and sign: a Completion if the message ends here."""
        now = self._clock()
        try:
            env = envelope_mod.decode(received.body)
            self._check_pool(env)
        except EnvelopeError as exc:
            return self._reject(received, str(exc))
        queued_at = env.queued_at or received.sent_at or now
        if env.not_before is not None and env.not_before > now + 1:
            return self._postpone(received, env)
        if received.receive_count > 1 and self._finalized is not None:
            # Delivered before? A sender may have crashed after recording the outcome
            # and before deleting the message: skip recipients that are already final.
            done = await self._finalized(env.id)
            if done:
                pending = tuple(r for r in env.recipients if r not in done)
                if not pending:
                    return Completion(received=received)
                env = replace(env, recipients=pending)
        if self._expired(env, queued_at, now):
            return self._expire(received, env, now)

        rules = self._policy.content
        try:
            raw = env.raw if env.raw is not None else await self._bodies.get(
                env.raw_s3 or "", max_size=rules.max_message_size)
        except (MissingObject, TooLarge) as exc:
            return self._reject(received, f"raw_s3: {exc}", env)
        try:
            ready = prepare(raw, max_size=rules.max_message_size, long_lines=rules.long_lines)
        except ContentError as exc:
            return self._reject(received, f"raw: {exc}", env)
        message = ready.message
        declare = ready.eight_bit and rules.eight_bit == "declare"
        if ready.eight_bit and not declare:
            message = seven_bit(message)
        try:
            signature = await self._sign(message)
        except DkimError as exc:
            return self._reject(received, f"raw: cannot DKIM-sign: {exc}", env)
        signed = signature + message
        # The signed copy is what travels; the envelope keeps no second copy (a retry
        # recovers the unsigned body from it, and is signed afresh on its attempt).
        return _Prepared(env=replace(env, raw=None), message=signed,
                         signature_length=len(signature), inline=env.raw is not None,
                         queued_at=queued_at,
                         seven_bit=_SevenBit(self._sign, signed, len(signature)) if declare
                         else None,
                         original=raw if env.raw is not None and message is not raw else None)

    async def _deliver(self, received: Received, prepared: _Prepared) -> Completion:
        env, message = prepared.env, prepared.message
        pool = env.pool or self._policy.default_pool
        by_domain: dict[str, list[str]] = defaultdict(list)
        for rcpt in env.recipients:
            by_domain[domain_of(rcpt)].append(rcpt)
        deliveries = [
            self._transport.deliver(
                pool=pool, domain=domain, sender=env.sender, recipients=rcpts, message=message,
                seven_bit=prepared.seven_bit,
            )
            for domain, rcpts in by_domain.items()
        ]
        if len(deliveries) == 1:
            # The common case: one domain. Awaited directly, it costs no task of its own.
            attempts = await deliveries[0]
        else:
            attempts = [a for batch in await asyncio.gather(*deliveries) for a in batch]
        if prepared.inline and any(not a.reply.positive and not a.reply.permanent
                                   for a in attempts):
            env = replace(env, raw=prepared.original or message[prepared.signature_length:])
        return self._outcomes(received, env, attempts, pool=pool, queued_at=prepared.queued_at)

    def _check_pool(self, env: Envelope) -> None:
        if env.pool is not None and env.pool not in self._policy.pools:
            known = ", ".join(sorted(self._policy.pools))
            raise EnvelopeError("pool", f"unknown pool {env.pool!r} (known: {known})")

    async def _sign(self, raw: bytes) -> bytes:
        """The DKIM-Signature header field for `raw` (empty if its domain has no key)."""
        domain = from_domain(raw)
        signer = self._signers.for_domain(domain) if domain else None
        if signer is None:
            return b""
        if self._signing is None:
            return signer.sign(raw)
        unsigned = signer.prepare(raw)
        signature = await self._signing.run(signer.key_sign, unsigned.data)
        return signer.finish(unsigned, signature)

    def _outcomes(
        self,
        received: Received,
        env: Envelope,
        attempts: Sequence[Attempt],
        *,
        pool: str,
        queued_at: float,
    ) -> Completion:
        now = self._clock()
        attempt_no = env.attempt + 1
        records: list[Record] = []
        pending: list[str] = []
        counted = False
        next_at = now + self._retry_delay(attempt_no)
        deadline = self._deadline(env, queued_at)
        queued_ms = max(0, int((now - queued_at) * 1000))
        for a in attempts:
            fields = a.delivery_fields()
            fields["queued_ms"] = queued_ms
            if a.reply.positive:
                kind: EventType = "delivered"
            elif a.reply.permanent:
                kind = "bounced"
                fields["bounce"] = self._classifier.classify(
                    code=a.reply.code, enhanced=a.reply.enhanced, text=a.reply.text
                ).as_event()
            elif next_at > deadline:
                kind = "expired"
            else:
                kind = "deferred"
                counted = counted or a.counts
                pending.append(a.rcpt)
                fields["next_attempt_at"] = rfc3339_ms(next_at)
            records.append(make_event(
                kind, envelope=env, rcpt=a.rcpt, attempt=attempt_no, pool=pool, at=now, **fields
            ))
        completion = Completion(received=received, records=records)
        if pending:
            retry = env.retry(
                recipients=tuple(pending),
                attempt=attempt_no if counted else env.attempt,
                not_before=next_at,
                queued_at=queued_at,
            )
            completion.retry.append(Outgoing(
                body=envelope_mod.encode(retry), delay_seconds=_delay(next_at - now)
            ))
        return completion

    def _retry_delay(self, attempt: int) -> float:
        retry = self._policy.retry
        base = retry.delay(attempt)
        return base * (1 - retry.jitter * self._rng.random())

    def _deadline(self, env: Envelope, queued_at: float) -> float:
        deadline = queued_at + self._policy.retry.max_age
        if env.expires is not None:
            deadline = min(deadline, env.expires.timestamp())
        return deadline

    def _expired(self, env: Envelope, queued_at: float, now: float) -> bool:
        return now >= self._deadline(env, queued_at)

    def _expire(self, received: Received, env: Envelope, now: float) -> Completion:
        pool = env.pool or self._policy.default_pool
        reason = "expires passed" if env.expires and now >= env.expires.timestamp() else (
            "max_age reached"
        )
        records = [
            make_event(
                "expired", envelope=env, rcpt=r, attempt=env.attempt, pool=pool, at=now,
                response={"code": 451, "enhanced": "4.4.7", "text": f"not delivered: {reason}"},
            )
            for r in env.recipients
        ]
        return Completion(received=received, records=records)

    def _postpone(self, received: Received, env: Envelope) -> Completion:
        """Not due yet: send it back with the remaining delay (hops of at most 15 min)."""
        assert env.not_before is not None
        wait = env.not_before - self._clock()
        return Completion(
            received=received,
            retry=[Outgoing(body=received.body, delay_seconds=_delay(wait))],
        )

    def _reject(self, received: Received, reason: str, env: Envelope | None = None) -> Completion:
        now = self._clock()
        if env is None:
            records = [rejected_event(message_id=received.message_id, reason=reason, at=now)]
        else:
            pool = env.pool or self._policy.default_pool
            records = [
                make_event("rejected", envelope=env, rcpt=r, attempt=env.attempt, pool=pool,
                           at=now, response=None, reason=reason)
                for r in env.recipients
            ]
        log.warning("message %s rejected: %s", received.message_id, reason)
        dead = Outgoing(
            body=received.body,
            attributes={"quiver-reason": reason[:256], "quiver-message-id": received.message_id},
        )
        return Completion(received=received, records=records, dead=[dead])


def _delay(seconds: float) -> int:
    return max(0, min(MAX_DELAY, math.ceil(seconds)))
