"""What the intakes did with each inbound mail, counted by outcome and reason.

Every object ends in exactly one outcome: `accepted` (acted on: events published,
or, for an unsubscribe request, nothing left to do), `ignored` (not a report or not
a request: an auto-reply, an out-of-office, a delay warning, too large...),
`refused` (a return path or unsubscribe token that does not verify: forged,
expired key, another tenant's...) or `untrusted` (a complaint whose reporter the
[feedback] policy does not trust: kept in the bucket, acting on nothing). The counts
go out as CloudWatch EMF metrics, namespace `Quiver`, metric `inbound_<outcome>`,
dimensions `kind` (bounce, complaint, unsubscribe) and `reason`, so a wave of
forged bounces is a graph, not a guess. An accepted complaint is also counted as
`complaints` per (tenant, campaign, provider), the complaint rate's numerator
(quiver.complaint_rate).

Counted when an object's outcome is known, after its events are published; an
object processed twice (a duplicate notification that is not a retry of a failure)
is counted twice, as CloudWatch's own at-least-once extraction of EMF may.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from quiver.complaint_rate import COMPLAINTS, UNKNOWN, RateCounts, RateKey
from quiver.emf import COUNT, document, write

NAMESPACE = "Quiver"
Kind = Literal["bounce", "complaint", "unsubscribe"]
OutcomeName = Literal["accepted", "ignored", "refused", "untrusted"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One inbound mail's fate. `reason` is machine-readable (a refusal reason, an
    ignore reason, a trust decision); `detail` says more, for the log."""

    kind: Kind
    outcome: OutcomeName
    reason: str
    detail: str = ""
    events: int = 0
    suppressed: int = 0
    # What an accepted complaint counts against in the complaint rate.
    complaint: RateKey | None = None
    # An accepted complaint's egress source, by the report's Source-IP (policy sources'
    # `ip`); None when the report names none or an address of no source.
    source: str | None = None

    @property
    def dropped(self) -> bool:
        return self.outcome != "accepted"


class IntakeCounts:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._clock = clock
        self.complaints = RateCounts(COMPLAINTS, clock=clock)
        # Accepted complaints per (source, provider), beside the sender's outcomes per
        # source (quiver.sender.source_metrics): which IP the complaints come in on.
        self.by_source: Counter[tuple[str, str]] = Counter()

    def count(self, outcome: Outcome) -> None:
        self.counts[(outcome.kind, outcome.outcome, outcome.reason)] += 1
        if outcome.complaint is not None and outcome.outcome == "accepted":
            self.complaints.count(outcome.complaint)
            self.by_source[(outcome.source or UNKNOWN, outcome.complaint.provider)] += 1

    def flush(self, out: TextIO | None = None) -> int:
        """Emit one EMF document per (kind, outcome, reason) and one per (tenant,
        campaign, provider) complained about; returns how many."""
        counts, self.counts = self.counts, Counter()
        target = out or sys.stdout
        at_ms = int(self._clock() * 1000)
        for (kind, outcome, reason), n in sorted(counts.items()):
            write(target, [document(at_ms=at_ms, values={f"inbound_{outcome}": (n, COUNT)},
                                    dimensions={"kind": kind, "reason": reason})])
        by_source, self.by_source = self.by_source, Counter()
        written = write(target, [
            document(at_ms=at_ms, values={COMPLAINTS: (n, COUNT)},
                     dimensions={"source": source, "provider": provider})
            for (source, provider), n in sorted(by_source.items())])
        written += self.complaints.flush(target)
        target.flush()
        return len(counts) + written
