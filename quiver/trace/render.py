"""A trace as text (a table and a verdict per recipient) or as one JSON object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from quiver.trace.target import Event
from quiver.trace.verdict import Recipient, ordered, reply

# Cut long replies in the table; --json keeps them whole.
_TEXT_WIDTH = 60
COLUMNS = ("AT", "EVENT", "ID", "RCPT", "ATTEMPT", "RESPONSE / REASON", "SOURCE / IP",
           "NEXT ATTEMPT")


@dataclass
class Trace:
    target: str
    since: str
    until: str
    reader: str
    read: str
    events: list[Event]
    recipients: list[Recipient]
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "since": self.since, "until": self.until,
            "reader": self.reader, "read": self.read, "events": ordered(self.events),
            "recipients": [{
                "id": r.id, "rcpt": r.rcpt, "state": r.state, "verdict": r.verdict(),
                "final": r.final, "claim": asdict(r.claim) if r.claim else None,
            } for r in self.recipients],
            "notes": self.notes,
        }


def row(record: Event) -> tuple[str, ...]:
    why = record.get("reason") if record.get("event") != "deferred" else None
    response = record.get("response")
    text = why or (reply(response) if response else "")
    if record.get("event") == "bounced" and record.get("bounce"):
        text += f" [{record['bounce'].get('kind')}]"
    if len(text) > _TEXT_WIDTH:
        text = text[:_TEXT_WIDTH - 1] + "…"
    source = " ".join(str(record[k]) for k in ("source", "source_ip") if record.get(k))
    return (str(record.get("at", "")), str(record.get("event", "")), str(record.get("id", "")),
            str(record.get("rcpt") or ""), str(record.get("attempt", "")), text, source,
            str(record.get("next_attempt_at") or ""))


def write_text(trace: Trace, out: TextIO) -> None:
    out.write(f"trace {trace.target}: {trace.since} to {trace.until}\n")
    out.write(f"read: {trace.read}\n")
    events = ordered(trace.events)
    if events:
        rows = [COLUMNS, *(row(e) for e in events)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        out.write("\n")
        for r in rows:
            out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                      + "\n")
    else:
        out.write("\nno events in the window\n")
    if trace.recipients:
        out.write("\n")
        for recipient in trace.recipients:
            out.write(f"{recipient.id} {recipient.rcpt or '(no recipient)'}: "
                      f"{recipient.verdict()}\n")
    for note in trace.notes:
        out.write(f"note: {note}\n")


def write_json(trace: Trace, out: TextIO) -> None:
    out.write(json.dumps(trace.as_json(), ensure_ascii=False, indent=2) + "\n")
