"""The post-delivery event records the intakes publish (contract v1, quiver.events).

What a return path recovers is the message id, the recipient, the tenant and the
campaign; the caller's `from`, `pool` and `meta` are not kept with it, so they are
null / empty on these events, and `attempt` is 0: they record no attempt of ours.
"""

from __future__ import annotations

from quiver.events import VERSION, Bounce, Dsn, EventRecord, EventType, rfc3339_ms
from quiver.returnpath import Verified


def post_delivery_event(event: EventType, *, verified: Verified, at: float,
                        inbound_object: str) -> EventRecord:
    return {
        "v": VERSION,
        "event": event,
        "at": rfc3339_ms(at),
        "id": verified.message_id,
        "rcpt": verified.recipient,
        "from": None,
        "tenant": verified.tenant,
        "campaign": verified.campaign,
        "pool": None,
        "meta": {},
        "attempt": 0,
        "inbound_object": inbound_object,
    }


def async_bounce_event(*, verified: Verified, at: float, inbound_object: str, bounce: Bounce,
                       dsn: Dsn) -> EventRecord:
    record = post_delivery_event("async_bounce", verified=verified, at=at,
                                 inbound_object=inbound_object)
    record["bounce"] = bounce
    record["dsn"] = dsn
    return record


def complaint_event(*, verified: Verified, at: float, inbound_object: str,
                    feedback_type: str, reporter: str) -> EventRecord:
    record = post_delivery_event("complaint", verified=verified, at=at,
                                 inbound_object=inbound_object)
    record["feedback_type"] = feedback_type
    record["reporter"] = reporter
    return record
