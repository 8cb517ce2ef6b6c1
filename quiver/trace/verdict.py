"""The events of a trace in time order, and what became of each recipient."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quiver.events import FINAL_EVENTS, POST_DELIVERY_EVENTS
from quiver.trace.claims import Claim
from quiver.trace.target import Event

# Within one millisecond, an attempt's deferral comes before a final event, and a
# final event before what came back after it.
_RANK: dict[str, int] = {"deferred": 0, **{e: 1 for e in FINAL_EVENTS},
                         **{e: 2 for e in POST_DELIVERY_EVENTS}}


def ordered(records: list[Event]) -> list[Event]:
    """Time order; duplicates (one record exported twice) once."""
    seen: set[str] = set()
    out = []
    for record in sorted(records, key=lambda r: (str(r.get("at", "")), int(r.get("attempt") or 0),
                                                 _RANK.get(str(r.get("event")), 3))):
        key = repr(sorted((k, repr(v)) for k, v in record.items()))
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


@dataclass
class Recipient:
    """One recipient of one message: its events and its final claim."""

    id: str
    rcpt: str
    events: list[Event] = field(default_factory=list)
    claim: Claim | None = None

    @property
    def final(self) -> Event | None:
        finals = [e for e in self.events if e.get("event") in FINAL_EVENTS]
        return finals[0] if finals else None

    @property
    def state(self) -> str:
        if self.final is not None:
            return str(self.final["event"])
        if self.claim is not None:
            return self.claim.event or "final"
        if any(e.get("event") == "deferred" for e in self.events):
            return "deferred"
        return "unknown"

    def verdict(self) -> str:
        final = self.final
        if final is not None:
            text = final_verdict(final)
        elif self.claim is not None:
            text = (f"{self.claim.event} at {self.claim.at} (claimed in the finals table; its "
                    "event is not in the window: widen --since)")
        else:
            deferred = [e for e in self.events if e.get("event") == "deferred"]
            if deferred:
                last = deferred[-1]
                text = (f"still deferred, next attempt at {last.get('next_attempt_at') or '?'} "
                        f"(attempt {last.get('attempt')}: {reply(last.get('response'))})")
            else:
                text = "no final event yet"
        after = [e for e in self.events if e.get("event") in POST_DELIVERY_EVENTS]
        for event in after:
            text += f"; then {event['event']} at {event.get('at')}: {post_delivery(event)}"
        return text


def final_verdict(final: Event) -> str:
    event = final.get("event")
    at = final.get("at")
    if event == "delivered":
        where = f", mx {final['mx']}" if final.get("mx") else ""
        return f"delivered at {at} (attempt {final.get('attempt')}{where})"
    if event == "bounced":
        bounce = final.get("bounce") or {}
        kind = f" [{bounce.get('kind')}/{bounce.get('category')}]" if bounce else ""
        return f"bounced: {reply(final.get('response'))}{kind} at {at}"
    if event == "suppressed":
        return f"suppressed: {final.get('reason') or (final.get('bounce') or {}).get('reason')}"
    if event == "expired":
        return f"expired at {at}: {final.get('reason')}; last reply {reply(final.get('response'))}"
    return f"{event} at {at}: {final.get('reason') or reply(final.get('response'))}"


def post_delivery(event: Event) -> str:
    if event.get("event") == "complaint":
        return f"{event.get('feedback_type')} from {event.get('reporter')}"
    if event.get("event") == "async_bounce":
        bounce = event.get("bounce") or {}
        return f"{bounce.get('kind')}: {bounce.get('reason')}"
    return str(event.get("reason") or "")


def reply(response: Any) -> str:
    if not isinstance(response, dict):
        return "no reply"
    parts = [str(response.get(k)) for k in ("code", "enhanced", "text") if response.get(k)]
    return " ".join(parts) or "no reply"


def recipients(records: list[Event], claims: list[Claim]) -> list[Recipient]:
    """One Recipient per (message id, recipient), addresses compared case-insensitively,
    in order of their first event (claims without events last)."""
    out: dict[tuple[str, str], Recipient] = {}
    for record in ordered(records):
        rcpt = record.get("rcpt")
        if not isinstance(rcpt, str):
            rcpt = ""
        key = (str(record.get("id")), rcpt.lower())
        out.setdefault(key, Recipient(id=key[0], rcpt=rcpt)).events.append(record)
    for claim in claims:
        key = (claim.id, claim.rcpt.lower())
        out.setdefault(key, Recipient(id=claim.id, rcpt=claim.rcpt)).claim = claim
    return list(out.values())
