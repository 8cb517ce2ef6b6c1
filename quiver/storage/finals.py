"""Exactly-once final events: claims per (message id, recipient).

A sender that crashes after its events were accepted but before it deleted the
message sees the message come back and produces a second final event for the
same recipients. The export Lambda claims every final event before writing it:
the first batch to claim (message id, recipient) keeps it, a later batch's
copy is dropped. Re-running the export on the same batch finds its own claims
and keeps them, so a retried batch still writes its objects.

The sender reads the claims for a redelivered message (receive count > 1) and
skips recipients that are already final, so the common crash case costs no
second delivery either (unless the export had not yet run; then the claim
still keeps the events exactly-once).

This module holds the rules; `FinalsStore` implementations (DynamoDB in
`dynamo.py`, in memory in `memory.py`) only read and write claims. In DynamoDB
the cost is one read and one write per final event at export, one Query per
redelivered message at the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quiver.events import FINAL_EVENTS, Record

# A claim outlives every redelivery of its message: SQS keeps a message 14 days at most.
TTL_SECONDS = 15 * 86400

Claim = tuple[str, str]  # (message id, recipient)


def final_key(record: Record) -> Claim | None:
    """The claim a record needs: final events with a recipient only."""
    if record.get("event") not in FINAL_EVENTS or not record.get("rcpt"):
        return None
    return str(record["id"]), str(record["rcpt"])


def claim_batch(
    batch_id: str,
    records: Sequence[Record],
    *,
    claimed_by: Callable[[list[Claim]], dict[Claim, str]],
    write: Callable[[str, list[tuple[Claim, Record]]], None],
) -> list[Record]:
    """`FinalsStore.claim` over a store's two primitives: which batch holds each of
    some claims (`claimed_by`), and the writing of new claims (`write`)."""
    wanted: dict[Claim, Record] = {}
    for record in records:
        key = final_key(record)
        if key is not None:
            wanted.setdefault(key, record)
    claimed = claimed_by(list(wanted))
    dropped = {k for k, batch in claimed.items() if batch != batch_id}
    write(batch_id, [(k, r) for k, r in wanted.items() if k not in claimed])
    seen: set[Claim] = set()
    keep = []
    for record in records:
        key = final_key(record)
        if key is not None:
            if key in dropped or key in seen:
                continue  # another batch (or this one, earlier) has its final event
            seen.add(key)
        keep.append(record)
    return keep
