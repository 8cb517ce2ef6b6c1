"""One outbound message from receipt to durable completion.

decode → (postpone if not yet due) → give up? → expire? → suppression list (each
suppressed recipient's final event is `suppressed`; the rest go on) → fetch body → check it and
ready it (quiver.content: size, header, long lines, 8-bit) → add List-Unsubscribe
(policy `unsubscribe`) → DKIM-sign → deliver per
domain → at most one event per recipient → re-enqueue the pending ones → complete
(events accepted, re-enqueues sent, then delete) → the suppression entries of its
synchronous hard bounces, written behind it.
A re-enqueue that cannot be written (its body's move to S3 failed) keeps the
original in the queue for the pending recipients instead; the finals of the
others are recorded all the same, and its redelivery skips them (`_keep`).
Bad input becomes a `rejected` event per recipient it names, and the original goes
to the DLQ untouched. A message that keeps coming back unfinished (a crash or hang
on it each time) is given up one receive before the queue's maxReceiveCount: a
`failed` event per recipient (`suppressed` for one on the suppression list), and
its body to the DLQ for a redrive.

Attempts are counted per recipient: a recipient's count grows by one per real try
at its destination (`Attempt.counts`), and its retries follow the retry schedule
for that count. A recipient that was not tried (its site backing off, its
connection drained by another's failure) keeps its count, gets no `deferred`
event, and waits the schedule's delay for its count again. Pending recipients are
re-enqueued in one message per attempt count, each with its own next-attempt time.

One-click unsubscribe headers name their recipient, so a message with several
recipients and an unsubscribe rule becomes one signed copy per recipient, each
sent in its own transaction: a DKIM signature per recipient instead of per
message. Messages of one recipient (what bulk senders enqueue) pay nothing more.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from quiver import envelope as envelope_mod
from quiver.addresses import domain_of
from quiver.bounce import Classifier
from quiver.content import ContentError, prepare, seven_bit
from quiver.controls.active import HOLD_STATUS, ActiveControls, hold_reason, hold_until
from quiver.controls.model import Control
from quiver.delivery import MESSAGE_LABELS, NO_LABELS, Attempt, Labels, Transport
from quiver.dkim import DkimError, SignerSet
from quiver.dkim.pool import Signing
from quiver.envelope import Envelope, EnvelopeError, LastReply
from quiver.events import (
    FINAL_EVENTS,
    EventFields,
    EventType,
    Record,
    make_event,
    rejected_events,
    rfc3339_ms,
)
from quiver.message import from_domain, message_id, prefixed
from quiver.policy import Policy
from quiver.policy.handle import PolicyHandle, handle_of
from quiver.returnpath import KeyRingError, ReturnPaths
from quiver.sender.complete import Completer, Completion
from quiver.settings import MIN_OUTBOUND_MAX_RECEIVES
from quiver.smtp.reply import Response
from quiver.storage.base import (
    BodyStore,
    MissingObject,
    Outgoing,
    Received,
    ReturnPathStore,
    StorageError,
    Suppression,
    TooLarge,
)
from quiver.suppression import (
    SuppressionCheck,
    SuppressionWriter,
    hard_bounce_entry,
    suppressed_fields,
)
from quiver.unsubscribe.headers import UnsubscribeHeaders, has_unsubscribe
from quiver.unsubscribe.token import Subject, TokenError

log = logging.getLogger("quiver.sender")
# A key-ring problem is logged at most this often (seconds): it hits every message.
KEY_WARNING_INTERVAL = 60.0

# SQS DelaySeconds maximum; longer waits hop through the queue in steps.
MAX_DELAY = 900
# A message whose body could not be fetched is retried this soon (transient S3).
BODY_RETRY_VISIBILITY = 30
# SQS refuses a larger message body; a re-enqueue that would exceed it (an inline
# body near the limit plus bookkeeping) moves its body to the spill bucket.
MAX_SQS_BODY = 256 * 1024
# A message kept in the queue because its re-enqueue could not be written comes back
# no sooner than this (seconds), though its retry may be due sooner: its redelivery
# skips the recipients already final only once the export has claimed their finals
# (the deployed export waits up to 30 s for a batch and runs up to 60 s).
PARTIAL_RELEASE_MIN = 300
# How long giving a message up waits for the suppression list (seconds); see
# `_suppressed_at_limit`.
GIVE_UP_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class _Copy:
    """One recipient's own signed copy (its List-Unsubscribe names it)."""

    message: bytes
    seven_bit: Callable[[], Awaitable[bytes]] | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    env: Envelope  # without its inline body
    message: bytes  # DKIM-Signature + body, as it goes on the wire
    signature_length: int
    inline: bool  # the body came inline (raw), not from S3 (raw_s3)
    queued_at: float
    # `suppressed` events of the recipients the suppression list took out.
    suppressed: tuple[Record, ...] = ()
    # The 7-bit form for servers without 8BITMIME, when the message has 8-bit data.
    seven_bit: Callable[[], Awaitable[bytes]] | None = None
    # The inline body as received, kept only when it was rewritten (re-encoded, or
    # its line ends): a retry starts from it, not from a rewritten copy that may
    # have grown past what an inline body may be.
    original: bytes | None = None
    # The From header's domain (lower case), None if the message has none readable.
    from_domain: str | None = None
    # Per recipient, when each has its own copy (unsubscribe headers on a message of
    # several recipients); None: `message` goes to every recipient.
    copies: dict[str, _Copy] | None = None
    # Re-enqueues of the recipients an operator control holds back on receipt (a
    # pause, a stop): sent with the completion, whatever happens to the others.
    held: tuple[Outgoing, ...] = ()
    # What its attempt events say of the message sent (`_sent_fields`).
    sent: EventFields | None = None


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
        policy: Policy | PolicyHandle,
        transport: Transport,
        signers: SignerSet,
        bodies: BodyStore,
        completer: Completer,
        classifier: Classifier,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        finalized: Callable[[str], Awaitable[set[str]]] | None = None,
        signing: Signing | None = None,
        max_receives: int = 0,
        return_paths: ReturnPaths | None = None,
        return_path_store: ReturnPathStore | None = None,
        suppression: SuppressionCheck | None = None,
        suppression_writer: SuppressionWriter | None = None,
        unsubscribe: UnsubscribeHeaders | None = None,
        controls: ActiveControls | None = None,
    ) -> None:
        # Operator controls in force (quiver.controls); None: none are followed.
        self._controls = controls
        # None: no suppression list (tools, tests of other parts); see `_suppress`.
        self._suppression = suppression
        self._suppression_writer = suppression_writer
        # The outbound queue's maxReceiveCount (deployment settings); 0: not known, and
        # a message that keeps failing reaches the DLQ without `failed` events.
        if max_receives and max_receives < MIN_OUTBOUND_MAX_RECEIVES:
            raise ValueError(f"max_receives must be 0 or at least {MIN_OUTBOUND_MAX_RECEIVES}")
        self._max_receives = max_receives
        # None: private-key operations on the event loop thread (tests, tools).
        self._signing = signing
        self._finalized = finalized
        # Read at each decision: a reload updates the shared handle.
        self._policy = handle_of(policy)
        self._transport = transport
        self._signers = signers
        self._bodies = bodies
        self._completer = completer
        self._classifier = classifier
        self._clock = clock
        self._rng = rng or random.Random()
        # Signed VERP (policy `return_path`): the key ring's signer and the store of
        # what each token stands for. Both or neither.
        if (return_paths is None) != (return_path_store is None):
            raise ValueError("return_paths and return_path_store go together")
        self._return_paths = return_paths
        self._return_path_store = return_path_store
        self._warned_no_keys = False
        self._key_warned_at = -math.inf
        # One-click unsubscribe headers (policy `unsubscribe`), signed with the same ring.
        self._unsubscribe = unsubscribe
        self._warned_no_unsubscribe = False

    def apply_policy(self, policy: Policy) -> None:
        """Policy reload: retry schedule and max_age from the next outcome on (the
        handle is shared: with one, updating it anywhere does the same)."""
        self._policy.update(policy)

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
                receipt = received.without_body()
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
        if completion.suppress and self._suppression_writer is not None:
            self._suppression_writer.add(completion.suppress)
        # A kept message is not done: it comes back for its pending recipients.
        return completion.release_after is None

    async def _prepare(self, received: Received) -> Completion | _Prepared:
        """Decode, check, fetch and sign: a Completion if the message ends here."""
        now = self._clock()
        try:
            env = envelope_mod.decode(received.body)
        except EnvelopeError as exc:
            return self._reject(received, str(exc))
        try:
            self._check_pool(env)
        except EnvelopeError as exc:
            return self._reject(received, str(exc), env)
        queued_at = env.queued_at or received.sent_at or now
        if env.not_before is not None and env.not_before > now + 1:
            return self._postpone(received, env)
        if self._max_receives and received.receive_count >= self._max_receives - 1:
            return await self._give_up(received, env, now)
        if received.receive_count > 1 and self._finalized is not None:
            # Delivered before? A sender may have crashed after recording the outcome
            # and before deleting the message: skip recipients that are already final.
            done = await self._finalized(env.id)
            if done:
                pending = tuple(r for r in env.recipients if r not in done)
                if not pending:
                    return Completion(received=received)
                env = replace(env, recipients=pending)
        if self._controls is not None and not self._controls.empty:
            env, taken, held = await self._controlled(received, env, queued_at=queued_at,
                                                      now=now)
            if not env.recipients:
                return Completion(received=received, records=taken, retry=held)
            result = await self._checked(received, env, queued_at=queued_at, now=now)
            if isinstance(result, Completion):
                result.records[:0] = taken
                result.retry.extend(held)
                return result
            return replace(result, suppressed=(*taken, *result.suppressed),
                           held=(*result.held, *held))
        return await self._checked(received, env, queued_at=queued_at, now=now)

    async def _checked(self, received: Received, env: Envelope, *, queued_at: float,
                       now: float) -> Completion | _Prepared:
        """`_prepare` from the expiry check on: deadline, suppression, body, signing."""
        if self._expired(env, queued_at, now):
            return self._expire(received, env, queued_at, now)
        suppressed: tuple[Record, ...] = ()
        if self._suppression is not None:
            checked = await self._suppress(received, env, queued_at=queued_at, now=now)
            if isinstance(checked, Completion):
                return checked
            env, suppressed = checked

        rules = self._policy.current.content
        try:
            raw = env.raw if env.raw is not None else await self._bodies.get(
                env.raw_s3 or "", max_size=rules.max_message_size)
        except (MissingObject, TooLarge) as exc:
            return self._reject(received, f"raw_s3: {exc}", env, suppressed=suppressed)
        try:
            ready = prepare(raw, max_size=rules.max_message_size, long_lines=rules.long_lines)
        except ContentError as exc:
            return self._reject(received, f"raw: {exc}", env, suppressed=suppressed)
        message = ready.message
        declare = ready.eight_bit and rules.eight_bit == "declare"
        if ready.eight_bit and not declare:
            message = seven_bit(message)
        domain = from_domain(message)
        # Kept only if it differs from what is signed (a retry starts from it then).
        # Equal bytes, not the same object: a checked message is a WireReady copy.
        original = raw if env.raw is not None and message != raw else None
        fields = self._unsubscribe_fields(env, domain, message)
        copies: dict[str, _Copy] | None = None
        try:
            if fields is not None and len(fields) > 1:
                copies = {}
                for rcpt, head in fields.items():
                    copy, length = await self._signed(prefixed(head, message), domain=domain)
                    copies[rcpt] = _Copy(message=copy, seven_bit=_SevenBit(
                        functools.partial(self._sign, domain=domain), copy, length)
                        if declare else None)
                # Only the copies travel; the first stands for the message in what
                # _Prepared records (a retry starts from `original`, never from it).
                signed, signature_length = copy, length
            else:
                if fields is not None:
                    message = prefixed(next(iter(fields.values())), message)
                signed, signature_length = await self._signed(message, domain=domain)
        except DkimError as exc:
            return self._reject(received, f"raw: cannot DKIM-sign: {exc}", env,
                                suppressed=suppressed)
        # The signed copy is what travels; the envelope keeps no second copy (a retry
        # recovers the unsigned body from it, and is signed afresh on its attempt).
        sent = self._sent_fields(signed, domain=domain)
        return _Prepared(env=env.without_raw(), message=signed,
                         signature_length=signature_length, inline=env.raw is not None,
                         queued_at=queued_at, suppressed=suppressed,
                         seven_bit=_SevenBit(functools.partial(self._sign, domain=domain), signed,
                                             signature_length) if declare
                         else None,
                         original=raw if fields is not None and env.raw is not None
                         else original,
                         from_domain=domain, copies=copies, sent=sent)

    def _sent_fields(self, signed: bytes, *, domain: str | None) -> EventFields:
        """The attempt events' fields about the message: its size as handed to SMTP (an
        attempt that reached DATA reports its own), the DKIM signer's domain and
        selectors (several keys of one domain: their selectors, comma-separated, in
        signing order), and its Message-ID header."""
        signers = self._signers.for_domain(domain) if domain else ()
        return {
            "message_size": len(signed),
            "dkim_domain": signers[0].domain if signers else None,
            "dkim_selector": ",".join(s.selector for s in signers) if signers else None,
            "message_id_header": message_id(signed),
        }

    async def _signed(self, message: bytes, *, domain: str | None) -> tuple[bytes, int]:
        signature = await self._sign(message, domain=domain)
        return prefixed(signature, message), len(signature)

    def _unsubscribe_fields(self, env: Envelope, domain: str | None,
                            message: bytes) -> dict[str, bytes] | None:
        """Each recipient's List-Unsubscribe and List-Unsubscribe-Post fields, when
        policy has a rule for the From domain and the message carries neither; None:
        the message goes as it is."""
        if domain is None:
            return None
        rule = self._policy.current.unsubscribe.rule(domain, tenant=env.tenant)
        if rule is None or has_unsubscribe(message):
            return None
        if self._unsubscribe is None:
            if not self._warned_no_unsubscribe:
                self._warned_no_unsubscribe = True
                log.warning("policy unsubscribe has a rule for %s, but this sender started "
                            "without the return-path key ring: no List-Unsubscribe is added "
                            "until it restarts with it", domain)
            return None
        try:
            return {rcpt: self._unsubscribe.fields(rule, Subject(
                tenant=env.tenant, campaign=env.campaign, message_id=env.id, recipient=rcpt))
                for rcpt in env.recipients}
        except (TokenError, KeyRingError) as exc:
            # The mail is still good mail: it goes without the headers, and says why
            # (a ring with no key that may sign now is the operator's to fix).
            self._key_warning(f"message {env.id}: no List-Unsubscribe added: {exc}")
            return None

    async def _deliver(self, received: Received, prepared: _Prepared) -> Completion:
        env = prepared.env
        labels = MESSAGE_LABELS.set(Labels(env.tenant, env.campaign)
                                    if env.tenant or env.campaign else NO_LABELS)
        try:
            return await self._deliver_labelled(received, prepared)
        finally:
            MESSAGE_LABELS.reset(labels)

    async def _deliver_labelled(self, received: Received, prepared: _Prepared) -> Completion:
        env, message = prepared.env, prepared.message
        pool = env.pool or self._policy.current.default_pool
        return_paths = await self._return_paths_for(env, prepared.from_domain)
        copies = prepared.copies
        if copies is not None:
            # Each recipient's own copy, in a transaction of its own.
            deliveries = [
                self._transport.deliver(
                    pool=pool, domain=domain_of(rcpt),
                    sender=return_paths[rcpt] if return_paths is not None else env.sender,
                    recipients=(rcpt,), message=copies[rcpt].message,
                    seven_bit=copies[rcpt].seven_bit,
                )
                for rcpt in env.recipients
            ]
        elif return_paths is None:
            by_domain: dict[str, list[str]] = defaultdict(list)
            for rcpt in env.recipients:
                by_domain[domain_of(rcpt)].append(rcpt)
            deliveries = [
                self._transport.deliver(
                    pool=pool, domain=domain, sender=env.sender, recipients=rcpts,
                    message=message, seven_bit=prepared.seven_bit,
                )
                for domain, rcpts in by_domain.items()
            ]
        else:
            # A return path names one recipient: one transaction each (on shared,
            # pipelined connections: the scheduler queues them as separate jobs).
            deliveries = [
                self._transport.deliver(
                    pool=pool, domain=domain_of(rcpt), sender=return_paths[rcpt],
                    recipients=(rcpt,), message=message, seven_bit=prepared.seven_bit,
                )
                for rcpt in env.recipients
            ]
        if len(deliveries) == 1:
            # The common case: one domain. Awaited directly, it costs no task of its own.
            attempts = await deliveries[0]
        else:
            attempts = [a for batch in await asyncio.gather(*deliveries) for a in batch]
        if prepared.inline and any(not a.reply.positive and not a.reply.permanent
                                   for a in attempts):
            env = replace(env, raw=prepared.original or message[prepared.signature_length:])
        completion = await self._outcomes(received, env, attempts, pool=pool,
                                          queued_at=prepared.queued_at,
                                          return_paths=return_paths,
                                          suppressed=prepared.suppressed,
                                          sent=prepared.sent,
                                          sizes=None if copies is None else {
                                              r: len(c.message) for r, c in copies.items()})
        # After _keep (release_after set) the original carries the held ones too.
        if prepared.held and completion.release_after is None:
            completion.retry.extend(prepared.held)
        return completion

    async def _return_paths_for(self, env: Envelope,
                                domain: str | None) -> dict[str, str] | None:
        """Each recipient's signed return path, stored before any is used; None when
        the envelope sender stays as the caller gave it: a null reverse path (<>)
        never gets one (nothing may answer a DSN), nor mail whose From domain has no
        bounce domain in policy. A store failure raises StorageError: the message is
        left for redelivery rather than sent with tokens nothing could verify."""
        if not env.sender or domain is None:
            return None
        bounce = self._policy.current.return_path.bounce_domain(domain, tenant=env.tenant)
        if bounce is None:
            return None
        if self._return_paths is None or self._return_path_store is None:
            if not self._warned_no_keys:
                self._warned_no_keys = True
                log.warning("policy return_path names a bounce domain for %s, but this "
                            "sender started without return-path keys: envelope senders "
                            "are not rewritten until it restarts with them", domain)
            return None
        out: dict[str, str] = {}
        records = []
        try:
            for rcpt in env.recipients:
                out[rcpt], record = self._return_paths.address(
                    bounce_domain=bounce, message_id=env.id, recipient=rcpt,
                    tenant=env.tenant, campaign=env.campaign)
                records.append(record)
        except KeyRingError as exc:
            # No key may sign now (all retired, or the newest not yet active): the mail
            # goes with the caller's envelope sender, as from a sender without keys,
            # rather than not at all; its bounces then reach the caller's address.
            self._key_warning(f"message {env.id}: envelope sender not rewritten: {exc}")
            return None
        await self._return_path_store.put(records)
        return out

    def _key_warning(self, text: str) -> None:
        """Log a key-ring problem at most once per KEY_WARNING_INTERVAL."""
        now = self._clock()
        if now - self._key_warned_at >= KEY_WARNING_INTERVAL or now < self._key_warned_at:
            self._key_warned_at = now
            log.warning("%s", text)

    async def _suppress(
        self, received: Received, env: Envelope, *, queued_at: float, now: float
    ) -> Completion | tuple[Envelope, tuple[Record, ...]]:
        """Take suppressed recipients out: the envelope of the rest and the suppressed
        ones' events, or a Completion if none is left to send (or the list could not
        be read and `[suppression] on_error` is "defer")."""
        assert self._suppression is not None
        try:
            found = await self._suppression.check(env.recipients, tenant=env.tenant)
        except StorageError as exc:
            rules = self._policy.current.suppression
            if rules.on_error == "send":
                # Reported, rate-limited, by the check; per message only when debugging.
                log.debug("message %s: suppression list unreadable (%s); sending unchecked "
                          "([suppression] on_error = \"send\")", received.message_id, exc)
                return env, ()
            return await self._defer_unchecked(received, env, queued_at=queued_at, now=now,
                                               why=f"suppression list unreadable: {exc}")
        if not found:
            return env, ()
        records = self._suppressed_events(env, found, now=now)
        rest = tuple(r for r in env.recipients if r not in found)
        if not rest:
            return Completion(received=received, records=records)
        return replace(env, recipients=rest,
                       last={r: v for r, v in env.last.items() if r in rest}), tuple(records)

    def _suppressed_events(self, env: Envelope, found: dict[str, Suppression], *,
                           now: float) -> list[Record]:
        """The one final `suppressed` event of each recipient `found` on the list."""
        pool = env.pool or self._policy.current.default_pool
        records = []
        for rcpt, entry in found.items():
            reason, bounce = suppressed_fields(entry)
            records.append(make_event("suppressed", envelope=env, rcpt=rcpt, attempt=env.attempt,
                                      pool=pool, at=now, response=None, reason=reason,
                                      bounce=bounce))
        return records

    async def _defer_unchecked(self, received: Received, env: Envelope, *, queued_at: float,
                               now: float, why: str) -> Completion:
        """Recipients that could not be checked: back to the queue `error_retry` later,
        no attempt counted and no event (nothing was tried), `why` as their last reply
        so an `expired` event says it; expired now if that is past their deadline."""
        when = now + self._policy.current.suppression.error_retry
        log.debug("message %s deferred %.0fs: %s", received.message_id, when - now, why)
        last = dict(env.last)
        for rcpt in env.recipients:
            previous = last.get(rcpt)
            if previous is None or not previous.tried:
                last[rcpt] = LastReply.of(code=451, enhanced="4.3.0", text=why, tried=False)
        if when > self._deadline(env, queued_at):
            env = replace(env, last=last)
            return self._expire(received, env, queued_at, now, at=when)
        retry = env.retry(recipients=env.recipients, attempt=env.attempt, not_before=when,
                          queued_at=queued_at, last=last)
        return Completion(received=received, retry=[Outgoing(
            body=await self._encode_bounded(retry), delay_seconds=_delay(when - now))])

    def _check_pool(self, env: Envelope) -> None:
        if env.pool is not None and env.pool not in self._policy.current.pools:
            known = ", ".join(sorted(self._policy.current.pools))
            raise EnvelopeError("pool", f"unknown pool {env.pool!r} (known: {known})")

    async def _sign(self, raw: bytes, *, domain: str | None) -> bytes:
        """The DKIM-Signature header fields for `raw`, one per key of its From `domain`
        (empty if it has none). Each signs `raw` alone, not the others' fields."""
        signers = self._signers.for_domain(domain) if domain else ()
        if self._signing is None:
            return b"".join(signer.sign(raw) for signer in signers)
        if len(signers) == 1:
            # The common case, awaited directly: no task and no gather of its own.
            (signer,) = signers
            unsigned = signer.prepare(raw)
            return signer.finish(unsigned, await self._signing.sign(signer, unsigned.data))
        prepared = [(signer, signer.prepare(raw)) for signer in signers]
        # The key operations of one message run side by side on the signing workers.
        signatures = await asyncio.gather(*(
            self._signing.sign(signer, unsigned.data) for signer, unsigned in prepared))
        return b"".join(signer.finish(unsigned, signature)
                        for (signer, unsigned), signature in zip(prepared, signatures, strict=True))

    async def _outcomes(
        self,
        received: Received,
        env: Envelope,
        attempts: Sequence[Attempt],
        *,
        pool: str,
        queued_at: float,
        return_paths: dict[str, str] | None = None,
        suppressed: tuple[Record, ...] = (),
        sent: EventFields | None = None,
        sizes: dict[str, int] | None = None,
    ) -> Completion:
        """Each attempt's event, with `sent` (the message's fields) and, per recipient
        with its own copy, `sizes`; then the re-enqueues of the pending."""
        now = self._clock()
        deadline = self._deadline(env, queued_at)
        queued_ms = max(0, int((now - queued_at) * 1000))
        records: list[Record] = list(suppressed)
        suppress: list[Suppression] = []
        hard = self._policy.current.suppression.hard_bounce_categories
        # A refusal at the end of DATA answers the whole transaction with one reply
        # (the session hands every accepted recipient that same object): it says
        # nothing about which mailbox is bad, so it suppresses none of them.
        shared = _shared_replies(attempts) if hard else set()
        # Pending recipients by their attempt count, and each count's next attempt time.
        pending: dict[int, list[str]] = defaultdict(list)
        next_at: dict[int, float] = {}
        # Recipients held by operator controls, by when they are due again.
        held: dict[float, list[str]] = defaultdict(list)
        last = dict(env.last)
        for a in _one_per_recipient(attempts):
            tried = a.counts or a.reply.positive
            count = env.attempt + 1 if tried else env.attempt
            fields = a.delivery_fields()
            fields["queued_ms"] = queued_ms
            if sent is not None:
                fields.update(sent)
                if a.size is not None:
                    fields["message_size"] = a.size
                elif sizes is not None:
                    fields["message_size"] = sizes[a.rcpt]
            if return_paths is not None:
                fields["return_path"] = return_paths[a.rcpt]
            kind: EventType | None
            if a.reply.positive:
                kind = "delivered"
            elif a.hold is not None and not tried:
                # Held back by an operator control before its transaction: no attempt,
                # no event; back in the queue when the control may be lifted, and
                # expired, naming the control, once it has held it past its deadline.
                last[a.rcpt] = _remember(last.get(a.rcpt), a, tried=False)
                if now >= deadline:
                    kind = "expired"
                    fields["response"] = _final_response(last[a.rcpt], unknown=None)
                    fields["reason"] = self._held_expiry_reason(env, now=now, why=a.hold.why)
                else:
                    kind = None
                    held[min(a.hold.until, deadline)].append(a.rcpt)
            elif a.reply.permanent:
                kind = "bounced"
                bounce = self._classifier.classify(
                    code=a.reply.code, enhanced=a.reply.enhanced, text=a.reply.text)
                fields["bounce"] = bounce.as_event()
                if (bounce.kind == "hard" and bounce.category in hard
                        and id(a.reply) not in shared):
                    suppress.append(hard_bounce_entry(rcpt=a.rcpt, tenant=env.tenant,
                                                      message_id=env.id, at=now,
                                                      reply=bounce.reason))
            else:
                last[a.rcpt] = _remember(last.get(a.rcpt), a, tried=tried)
                when = next_at.get(count)
                if when is None:
                    # One draw per count: a recipient not tried this time waits the delay
                    # its count calls for again, so its retries are spaced all the same.
                    when = next_at[count] = now + self._retry_delay(max(1, count))
                if when > deadline:
                    kind = "expired"
                    fields["response"] = _final_response(last[a.rcpt], unknown=None)
                    fields["reason"] = self._expiry_reason(env, at=when, upcoming=True)
                else:
                    # An untried recipient gets no event: nothing happened to it.
                    kind = "deferred" if tried else None
                    fields["next_attempt_at"] = rfc3339_ms(when)
                    pending[count].append(a.rcpt)
            if kind is not None:
                records.append(make_event(
                    kind, envelope=env, rcpt=a.rcpt, attempt=count, pool=pool, at=now, **fields
                ))
        completion = Completion(received=received, records=records, suppress=suppress)
        try:
            for count, rcpts in pending.items():
                retry = env.retry(recipients=tuple(rcpts), attempt=count,
                                  not_before=next_at[count], queued_at=queued_at, last=last)
                completion.retry.append(Outgoing(
                    body=await self._encode_bounded(retry),
                    delay_seconds=_delay(next_at[count] - now)))
            for when, rcpts in held.items():
                retry = env.retry(recipients=tuple(rcpts), attempt=env.attempt,
                                  not_before=when, queued_at=queued_at, last=last)
                completion.retry.append(Outgoing(body=await self._encode_bounded(retry),
                                                 delay_seconds=_delay(when - now)))
        except StorageError as exc:
            due = min([*(next_at[c] for c in pending), *held])
            return self._keep(completion, exc, due=due, now=now)
        return completion

    def _held_expiry_reason(self, env: Envelope, *, now: float, why: str) -> str:
        """An `expired` event's reason for a recipient an operator control held past its
        deadline: the deadline, and the control (`why` names it)."""
        return f"{self._expiry_reason(env, at=now, upcoming=False)} while {why}"

    async def _controlled(
        self, received: Received, env: Envelope, *, queued_at: float, now: float,
    ) -> tuple[Envelope, list[Record], list[Outgoing]]:
        """Operator controls on receipt, per recipient: an admin bounce gives it a
        `bounced` final event (no SMTP, no attempt counted); a pause or a stop sends it
        back to the queue until the control may be lifted (`[controls] recheck`, or
        its expiry if sooner; never past its deadline), with no attempt counted and no
        event, the control as its last reply; past its deadline, `expired` naming the
        control. Returns the envelope of the recipients that go on, the events, and
        the re-enqueues."""
        assert self._controls is not None
        pool = env.pool or self._policy.current.default_pool
        recheck = self._policy.current.controls.recheck
        deadline = self._deadline(env, queued_at)
        records: list[Record] = []
        groups: dict[str, tuple[Control, list[str]]] = {}
        rest: list[str] = []
        for rcpt in env.recipients:
            control = self._controls.on_receipt(pool=pool, tenant=env.tenant,
                                                campaign=env.campaign, domain=domain_of(rcpt))
            if control is None:
                rest.append(rcpt)
            elif control.kind == "bounce":
                reason = f"admin bounce: {control.reason} (control {control.id} by {control.who})"
                records.append(make_event(
                    "bounced", envelope=env, rcpt=rcpt, attempt=env.attempt, pool=pool, at=now,
                    response=None, reason=reason,
                    bounce={"kind": "admin", "category": "admin-bounce", "reason": reason}))
            else:
                groups.setdefault(control.id, (control, []))[1].append(rcpt)
        if not groups and not records:
            return env, [], []
        held: list[Outgoing] = []
        last = dict(env.last)
        for control, rcpts in groups.values():
            why = hold_reason(control)
            for rcpt in rcpts:
                previous = last.get(rcpt)
                if previous is None or not previous.tried:
                    last[rcpt] = LastReply.of(code=451, enhanced=HOLD_STATUS, text=why, tried=False)
            if now >= deadline:
                reason = self._held_expiry_reason(env, now=now, why=why)
                records.extend(make_event(
                    "expired", envelope=env, rcpt=r, attempt=env.attempt, pool=pool, at=now,
                    response=_final_response(last[r], unknown=why), reason=reason,
                    queued_ms=max(0, int((now - queued_at) * 1000))) for r in rcpts)
                continue
            when = min(hold_until(control, now=now, recheck=recheck), deadline)
            retry = env.retry(recipients=tuple(rcpts), attempt=env.attempt, not_before=when,
                              queued_at=queued_at, last=last)
            held.append(Outgoing(body=await self._encode_bounded(retry),
                                 delay_seconds=_delay(when - now)))
        log.debug("message %s: %d recipients held, %d finished by operator controls",
                  received.message_id, sum(len(r) for _, r in groups.values()), len(records))
        return (replace(env, recipients=tuple(rest),
                        last={r: v for r, v in env.last.items() if r in rest}), records, held)

    def _keep(self, completion: Completion, error: StorageError, *, due: float,
              now: float) -> Completion:
        """A re-enqueue could not be written (its body's move to S3 failed): the original
        stays in the queue instead, and its redelivery tries the pending recipients.
        The recipients this attempt made final are recorded all the same (events first,
        as for any completion), because the redelivery skips recipients already final
        (`finalized`) and would otherwise send to them again. It comes back at the
        attempt's own retry time, but not before PARTIAL_RELEASE_MIN (by then the export
        has claimed those finals) nor after MAX_DELAY.

        Raises `error` (the whole message comes back, as it was, with nothing recorded)
        when nothing this attempt did is final (recording its deferrals now would only
        record the same attempt again when it is repeated), or without a finals lookup
        (its delivered recipients would be sent to, and recorded, twice)."""
        if self._finalized is None or not any(r["event"] in FINAL_EVENTS
                                              for r in completion.records):
            raise error
        release = max(PARTIAL_RELEASE_MIN, min(MAX_DELAY, math.ceil(due - now)))
        # Their next attempt is the redelivery's; the original holds no time of its own.
        next_attempt = rfc3339_ms(now + release)
        for record in completion.records:
            if record["event"] == "deferred":
                record["next_attempt_at"] = next_attempt
        log.warning("message %s: re-enqueue failed (%s); recording %d events, the original "
                    "returns in %ds for its pending recipients", completion.received.message_id,
                    error, len(completion.records), release)
        # Not one re-enqueue may go: the original carries every pending recipient.
        return replace(completion, retry=[], release_after=release)

    async def _encode_bounded(self, env: Envelope) -> str:
        """The SQS body for a re-enqueue; its inline body moves to S3 if it would not fit."""
        body = envelope_mod.encode(env)
        if env.raw is None or len(body.encode()) <= MAX_SQS_BODY:
            return body
        digest = hashlib.sha256(env.raw).hexdigest()[:16]
        # Named by content, so a completion retried after a crash rewrites one object.
        uri = await self._bodies.put(f"retry/{env.id}-{digest}.eml", env.raw)
        return envelope_mod.encode(replace(env, raw=None, raw_s3=uri))

    def _retry_delay(self, attempt: int) -> float:
        retry = self._policy.current.retry
        base = retry.delay(attempt)
        return base * (1 - retry.jitter * self._rng.random())

    def _deadline(self, env: Envelope, queued_at: float) -> float:
        deadline = queued_at + self._policy.current.retry.max_age
        if env.expires is not None:
            deadline = min(deadline, env.expires.timestamp())
        return deadline

    def _expired(self, env: Envelope, queued_at: float, now: float) -> bool:
        return now >= self._deadline(env, queued_at)

    def _expiry_reason(self, env: Envelope, *, at: float, upcoming: bool) -> str:
        """Why a recipient expires: its deadline has passed at `at` (the next attempt's
        time when `upcoming`: it would come too late)."""
        which = ("its expires time" if env.expires is not None
                 and at >= env.expires.timestamp() else "max_age")
        return f"the next attempt would be past {which}" if upcoming else f"{which} passed"

    def _expire(self, received: Received, env: Envelope, queued_at: float,
                now: float, *, at: float | None = None) -> Completion:
        """Past its deadline on receipt (or, with `at`, its next attempt would be): each
        recipient's last reply, or why it had none."""
        pool = env.pool or self._policy.current.default_pool
        reason = (self._expiry_reason(env, at=now, upcoming=False) if at is None
                  else self._expiry_reason(env, at=at, upcoming=True))
        queued_ms = max(0, int((now - queued_at) * 1000))
        records = [
            make_event(
                "expired", envelope=env, rcpt=r, attempt=env.attempt, pool=pool, at=now,
                response=_final_response(env.last.get(r), unknown=reason),
                reason=_held_by(reason, env.last.get(r)), queued_ms=queued_ms,
            )
            for r in env.recipients
        ]
        return Completion(received=received, records=records)

    async def _give_up(self, received: Received, env: Envelope, now: float) -> Completion:
        """Received once short of the queue's maxReceiveCount without ever completing
        (each earlier receive crashed, hung or was abandoned): a `failed` event for each
        recipient not yet final, and the message (those recipients, its body and its
        bookkeeping) to the DLQ for a redrive. A recipient on the suppression list gets
        its `suppressed` event instead (what any receive would have given it) and stays
        out of the DLQ copy. If this completion is lost too, the last receive does the
        same again; the export keeps one final event per recipient."""
        pending = env.recipients
        if self._finalized is not None:
            try:
                done = await self._finalized(env.id)
            except StorageError as exc:
                # The export's claims still drop a second final event.
                log.warning("message %s: finals lookup failed (%s); failing every recipient",
                            received.message_id, exc)
                done = set()
            pending = tuple(r for r in pending if r not in done)
        if not pending:
            return Completion(received=received)
        env = replace(env, recipients=pending)
        found = await self._suppressed_at_limit(received, env)
        suppressed = self._suppressed_events(env, found, now=now)
        pending = tuple(r for r in pending if r not in found)
        if not pending:
            return Completion(received=received, records=suppressed)
        pool = env.pool or self._policy.current.default_pool
        reason = (f"received {received.receive_count} times without completing (a crash or "
                  f"hang each time; the queue's maxReceiveCount is {self._max_receives}): "
                  "given up, message kept in the outbound DLQ")
        records = [
            *suppressed,
            *(make_event(
                "failed", envelope=env, rcpt=r, attempt=env.attempt, pool=pool, at=now,
                response=_final_response(env.last.get(r), unknown=None),
                reason=reason, sqs_message_id=received.message_id,
            ) for r in pending),
        ]
        log.warning("message %s (%s) given up: %s", received.message_id, env.id, reason)
        kept = replace(env, recipients=pending,
                       last={r: v for r, v in env.last.items() if r in pending})
        body = envelope_mod.encode(kept)
        if len(body.encode()) > MAX_SQS_BODY:
            body = received.body  # as it came, then: it fitted once
        dead = Outgoing(body=body, attributes={"quiver-reason": reason[:256],
                                               "quiver-message-id": received.message_id})
        return Completion(received=received, records=records, dead=[dead])

    async def _suppressed_at_limit(self, received: Received,
                                   env: Envelope) -> dict[str, Suppression]:
        """The recipients of a message being given up that are on the suppression list.
        The check may be what kept the message from completing (a store that hangs or
        breaks on it): bounded, and on any failure none is taken for suppressed, so
        every recipient still gets a final event now (`failed`, kept in the DLQ copy,
        whose redrive checks again). `on_error` does not apply: there is no later
        receive to defer to and nothing is sent unchecked."""
        if self._suppression is None:
            return {}
        try:
            async with asyncio.timeout(GIVE_UP_CHECK_TIMEOUT):
                return await self._suppression.check(env.recipients, tenant=env.tenant)
        except Exception as exc:  # whatever it is, the give-up must still complete
            log.warning("message %s: suppression list not checked before giving up (%r); "
                        "failing every recipient", received.message_id, exc)
            return {}

    def _postpone(self, received: Received, env: Envelope) -> Completion:
        """Not due yet: send it back with the remaining delay (hops of at most 15 min)."""
        assert env.not_before is not None
        wait = env.not_before - self._clock()
        return Completion(
            received=received,
            retry=[Outgoing(body=received.body, delay_seconds=_delay(wait))],
        )

    def _reject(self, received: Received, reason: str, env: Envelope | None = None, *,
                suppressed: Sequence[Record] = ()) -> Completion:
        """Every recipient of `env` rejected, the original to the DLQ. `suppressed`: the
        finals of recipients the suppression list already took out of `env`, which
        must be recorded with the rest (the original's deletion would lose them)."""
        now = self._clock()
        if env is None:
            # Whatever the body still says validly (the caller's id, recipients, tenant,
            # campaign) goes on the events, so the caller can find them.
            records = rejected_events(envelope_mod.readable(received.body),
                                      sqs_message_id=received.message_id, reason=reason, at=now)
        else:
            pool = env.pool or self._policy.current.default_pool
            records = [
                make_event("rejected", envelope=env, rcpt=r, attempt=env.attempt, pool=pool,
                           at=now, response=None, reason=reason,
                           sqs_message_id=received.message_id)
                for r in env.recipients
            ]
        records = [*suppressed, *records]
        log.warning("message %s rejected: %s", received.message_id, reason)
        dead = Outgoing(
            body=received.body,
            attributes={"quiver-reason": reason[:256], "quiver-message-id": received.message_id},
        )
        return Completion(received=received, records=records, dead=[dead])


def _held_by(reason: str, last: LastReply | None) -> str:
    """An expiry's reason, naming the operator control (a pause, a stop) that held the
    recipient back last, if one did since its last try."""
    if last is not None and not last.tried and last.enhanced == HOLD_STATUS:
        return f"{reason} while {last.text}"
    return reason


def _shared_replies(attempts: Iterable[Attempt]) -> set[int]:
    """Ids of the permanent replies that answer more than one recipient."""
    seen: set[int] = set()
    shared: set[int] = set()
    for a in attempts:
        if a.reply.permanent:
            key = id(a.reply)
            (shared if key in seen else seen).add(key)
    return shared


def _one_per_recipient(attempts: Iterable[Attempt]) -> list[Attempt]:
    """One attempt per recipient (the last reported), so each gets at most one event."""
    return list({a.rcpt: a for a in attempts}.values())


def _remember(previous: LastReply | None, attempt: Attempt, *, tried: bool) -> LastReply:
    """What a deferred recipient carries forward: its own reply if it was tried; if not,
    why not, unless it already has a reply of its own (which stays its last one)."""
    if not tried and previous is not None and previous.tried:
        return previous
    reply = attempt.reply
    return LastReply.of(code=reply.code, enhanced=reply.enhanced, text=reply.text, tried=tried)


def _final_response(last: LastReply | None, *, unknown: str | None) -> Response | None:
    """An `expired`/`failed` event's response: the recipient's own last reply, or a
    "never attempted" one saying why (the reason it was not tried, else `unknown`;
    None if that is None too)."""
    if last is not None and last.tried:
        return last.as_event()
    if last is not None:
        why = f"{last.code} {last.enhanced + ' ' if last.enhanced else ''}{last.text}"
    elif unknown is not None:
        why = unknown
    else:
        return None
    return {"code": 451, "enhanced": "4.4.7", "text": f"never attempted: {why}"}


def _delay(seconds: float) -> int:
    return max(0, min(MAX_DELAY, math.ceil(seconds)))
