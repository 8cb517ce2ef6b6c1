"""The one-click unsubscribe endpoint's work, apart from any HTTP server.

    GET  /u/<token>   → a confirmation page with a button; changes nothing, so
                        link scanners and prefetchers that follow URLs in mail
                        unsubscribe nobody
    POST /u/<token>   → body `List-Unsubscribe=One-Click` (RFC 8058 3.2, form
                        encoded or multipart): the recipient is suppressed for the
                        token's tenant (every tenant when the mail had none), and
                        one `unsubscribed` event goes to the events queue

A second POST for the same recipient and tenant changes nothing and sends no
event: the store's conditional write decides which request made the change.
Should the event not reach the queue, the suppression just written is taken back
and the answer is 503, so a retried POST starts over and nothing is half-done.
What the POST writes is quiver.unsubscribe.apply's, shared with the mailto intake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal
from urllib.parse import parse_qs

from quiver.returnpath.keys import KeyRing, KeyRingError, load_key_ring
from quiver.returnpath.refresh import CachedRing
from quiver.settings import Deployment
from quiver.storage.aws import BotoEventSink, secret_reader
from quiver.storage.base import EventSink, StorageError, SuppressionStore
from quiver.storage.dynamo import DynamoSuppression
from quiver.unsubscribe import apply, page
from quiver.unsubscribe.token import Subject
from quiver.unsubscribe.verify import Refusal, UnsubscribeVerifier

log = logging.getLogger("quiver.unsubscribe")

# RFC 8058's body is 26 octets; a form with a little more fits easily. Larger
# bodies are not one-click requests and are refused unread.
MAX_BODY = 4096

Outcome = Literal["confirm", "unsubscribed", "already", "refused", "bad_request",
                  "unavailable", "method"]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str
    outcome: Outcome
    headers: Mapping[str, str] = field(default_factory=lambda: dict(page.SECURITY_HEADERS))
    # Why a token was refused (counted by the caller), None otherwise.
    refusal: Refusal | None = None


class Unsubscriber:
    """Verifies the token, then shows the confirmation page (GET) or unsubscribes (POST)."""

    def __init__(self, *, keys: KeyRing | Callable[[], KeyRing], suppression: SuppressionStore,
                 events: EventSink, clock: Callable[[], float] = time.time) -> None:
        self._verifier = UnsubscribeVerifier(keys=keys, clock=clock)
        self._suppression = suppression
        self._events = events
        self._clock = clock

    @classmethod
    def from_deployment(cls, deployment: Deployment, *, session: Any) -> Unsubscriber:
        """The endpoint's one Unsubscriber: the suppression table, the events queue and
        the key ring's secret from the deployment. The ring is read at the first
        request and again every few minutes, so a rotation reaches a warm function."""
        reader = secret_reader(session)
        keys = CachedRing(lambda: load_key_ring(key_secret=deployment.key_ring_secret,
                                                read_secret=reader))
        return cls(keys=keys,
                   suppression=DynamoSuppression(session.client("dynamodb"),
                                                 deployment.suppression_table),
                   events=BotoEventSink(session.client("sqs"), deployment.events_queue_url))

    async def handle(self, *, method: str, token: str, body: bytes = b"",
                     content_type: str | None = None) -> Response:
        method = method.upper()
        if method not in ("GET", "POST"):
            return Response(405, page.bad_request("Only GET and POST are understood here."),
                            "method", headers={**page.SECURITY_HEADERS, "Allow": "GET, POST"})
        try:
            verified = self._verifier.verify(token)
        except KeyRingError as exc:  # the ring could not be read at all
            log.error("unsubscribe: no key ring: %s", exc)
            return Response(503, page.unavailable(), "unavailable",
                            headers={**page.SECURITY_HEADERS, "Retry-After": "60"})
        if isinstance(verified, Refusal):
            log.info("unsubscribe token refused: %s", verified)
            return Response(400 if verified.reason == "malformed" else 403, page.invalid(),
                            "refused", refusal=verified)
        subject = verified.subject
        if method == "GET":
            return Response(200, page.confirm(subject.recipient), "confirm")
        if not one_click(body, content_type):
            return Response(400, page.bad_request(
                "Expected the one-click body List-Unsubscribe=One-Click."), "bad_request")
        try:
            changed = await self.unsubscribe(subject)
        except StorageError as exc:
            log.warning("unsubscribe of %s (message %s) not recorded: %s",
                        subject.recipient, subject.message_id, exc)
            return Response(503, page.unavailable(), "unavailable",
                            headers={**page.SECURITY_HEADERS, "Retry-After": "60"})
        return Response(200, page.done(subject.recipient),
                        "unsubscribed" if changed else "already")

    async def unsubscribe(self, subject: Subject) -> bool:
        """Suppress the recipient and send its event; False if it was unsubscribed
        already (nothing written, no event). StorageError if either write failed,
        with the suppression taken back when it was the event that failed."""
        return await apply.unsubscribe(subject, suppression=self._suppression,
                                       events=self._events, at=self._clock())


def one_click(body: bytes, content_type: str | None) -> bool:
    """Whether a POST body says List-Unsubscribe=One-Click, form encoded or multipart
    (RFC 8058 3.2 allows either)."""
    if len(body) > MAX_BODY:
        return False
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "List-Unsubscribe":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes) and payload.strip() == b"One-Click":
                    return True
        return False
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return False
    return "One-Click" in parse_qs(text, max_num_fields=20).get("List-Unsubscribe", [])
