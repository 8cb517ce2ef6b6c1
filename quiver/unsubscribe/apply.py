"""What an unsubscribe does, however it arrived (a one-click POST, a mail to the
mailto address): the recipient is suppressed for the token's tenant (every tenant
when the mail had none) with reason `unsubscribe`, and one `unsubscribed` event
goes to the events queue. A recipient unsubscribed already is left alone: nothing
is written and no second event is sent, whichever way either request came.

The two ways differ only in how a retry is made safe. A POST has no identity of its
own: the suppression store's conditional write decides which request made the
change, and a failed event takes the suppression back so that the client's retry
starts over (`unsubscribe`). A mail is an object in the inbound bucket: its entry's
source names the object and its event goes out under the object's batch id, so
processing it again rewrites that same entry and republishes the same batch, which
the export writes once (`unsubscribe_from_mail`). That path never removes an entry,
so the intake needs no right to delete suppression items.
"""

from __future__ import annotations

from typing import Literal

from quiver.events import VERSION, Record, rfc3339_ms
from quiver.storage.base import ALL_TENANTS, EventSink, StorageError, Suppression, SuppressionStore
from quiver.unsubscribe.token import Subject

REASON = "unsubscribe"
Via = Literal["one-click (RFC 8058)", "mailto (RFC 2369)"]
ONE_CLICK: Via = "one-click (RFC 8058)"
MAILTO: Via = "mailto (RFC 2369)"
# The suppression list's bound on a source (quiver.suppression.writer.MAX_SOURCE, not
# imported: that module reads policy, which the endpoint's Lambda does not carry).
MAX_SOURCE = 512


def scope(subject: Subject) -> str:
    """The suppression tenant: the token's, or every tenant for mail without one."""
    return subject.tenant if subject.tenant is not None else ALL_TENANTS


def suppression_entry(subject: Subject, *, at: float, via: Via,
                      inbound_object: str | None = None) -> Suppression:
    source = f"{via}, message {subject.message_id}"
    if inbound_object is not None:
        source += f", {inbound_object}"
    return Suppression(address=subject.recipient, reason=REASON, created_at=at,
                       tenant=scope(subject), source=source[:MAX_SOURCE])


def unsubscribed_event(subject: Subject, *, at: float, via: Via = ONE_CLICK,
                       inbound_object: str | None = None) -> Record:
    """The post-delivery `unsubscribed` record for `subject` (no attempt of its own:
    attempt 0, no pool; `from` is not in the token)."""
    record: Record = {
        "v": VERSION, "event": "unsubscribed", "at": rfc3339_ms(at),
        "id": subject.message_id, "rcpt": subject.recipient, "from": None,
        "tenant": subject.tenant, "campaign": subject.campaign, "pool": None, "meta": {},
        "attempt": 0, "reason": via,
    }
    if inbound_object is not None:
        record["inbound_object"] = inbound_object
    return record


async def unsubscribe(subject: Subject, *, suppression: SuppressionStore, events: EventSink,
                      at: float) -> bool:
    """A one-click POST's unsubscribe: False if the recipient was unsubscribed already
    (nothing written, no event). StorageError if either write failed, with the
    suppression taken back when it was the event that failed."""
    entry = suppression_entry(subject, at=at, via=ONE_CLICK)
    if not await suppression.add(entry):
        return False
    try:
        await events.publish([unsubscribed_event(subject, at=at, via=ONE_CLICK)])
    except StorageError:
        await suppression.remove(subject.recipient, tenant=entry.tenant)
        raise
    return True


async def unsubscribe_from_mail(subject: Subject, *, suppression: SuppressionStore,
                                events: EventSink, at: float, inbound_object: str,
                                batch_id: str) -> bool:
    """A mailto request's unsubscribe, `at` the time SES stored the mail: False if the
    recipient was unsubscribed already by another request. StorageError if either
    write failed; the entry stays, and processing the object again finishes the work
    (its own entry is rewritten, its batch published again under `batch_id`)."""
    entry = suppression_entry(subject, at=at, via=MAILTO, inbound_object=inbound_object)
    if not await suppression.add(entry, rewrite_own=True):
        return False
    await events.publish([unsubscribed_event(subject, at=at, via=MAILTO,
                                             inbound_object=inbound_object)],
                         batch_id=batch_id)
    return True
