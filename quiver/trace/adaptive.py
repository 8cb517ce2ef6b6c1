"""The adaptive changes that affected a traced recipient: the engine's `control` events
(actor `adaptive`) whose selector its attempts matched, so a trace shows why mail
waited (a suspension of its source at its provider, a pause of its tenant) or went
slower (a rate cut) beside the recipient's own events."""

from __future__ import annotations

from collections.abc import Iterable

from quiver.trace.target import Event

ADAPTIVE = "adaptive"  # the engine's actor (quiver.adaptive.change.ACTOR)
# The fields of a recipient's events a change's selector is compared with.
_FIELDS = ("source", "provider", "tenant", "campaign", "pool")


def affecting(events: Iterable[Event], changes: Iterable[Event]) -> list[Event]:
    """The changes whose every selector field equals that field of one of `events`
    (the recipient's attempts carry source and provider; every event its tenant,
    campaign and pool), made before its last event and not ended before its first
    (a suspension drawn by its own attempt is recorded before that attempt's event)."""
    mine = [e for e in events if e.get("rcpt")]
    if not mine:
        return []
    first = min(str(e.get("at", "")) for e in mine)
    last = max(str(e.get("at", "")) for e in mine)
    seen = [{f: e.get(f) for f in _FIELDS if e.get(f) is not None} for e in mine]
    out = []
    for change in changes:
        selector = change.get("selector")
        until = change.get("until")
        if (not isinstance(selector, dict) or not selector
                or str(change.get("at", "")) > last
                or (until is not None and str(until) < first)):
            continue
        if any(all(fields.get(k) == v for k, v in selector.items()) for fields in seen):
            out.append(change)
    return out
