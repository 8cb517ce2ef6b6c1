"""Exactly-once final events: claims per (message id, recipient), where a second
final event can happen.

A final event needs a claim only if another final event for its recipient can
exist. The export claims (message id, recipient) for those: the first batch to
claim keeps its event, a later batch's copy is dropped; re-running the export on
a batch finds its own claims and keeps them. Every other final event is exported
without a claim, which saves the finals table one write and one read per
recipient on the common path (a message received once, delivered, deleted).

Which final events skip the claim. After a completion's events are accepted and
its messages deleted (quiver.sender.complete), the sender writes a
*confirmation* for the flush that published them (its producer id, carried by
every batch of the flush): one item per flush, listing the message ids whose
final events are *at risk*. The export claims a final event unless its batch's
producer is confirmed and its message id is not listed. A completion is at risk
when its message

1. was received more than once (ApproximateReceiveCount > 1), or a second copy
   of it arrived while it was in progress;
2. was sent by quiver, not by a caller: a re-enqueue (retry, postponed, held), a
   dead-letter copy, or a redrive (the `quiver-copy` message attribute, which
   quiver sets on each of these and `quiver dlq redrive` keeps);
3. is kept in the queue instead of deleted (`release_after`), or goes to the DLQ
   (its `rejected` or `failed` finals may be redriven).

And no confirmation at all (every final event of the flush claimed) when a
deletion returned after its message's visibility deadline, or failed.

Why that is exactly once. Take a final event F for (id, rcpt) exported without
a claim: it came from processing P of SQS message M, where M is a caller's
original received once, deleted before its visibility deadline, and not sent to
the DLQ. Any other final event F' for (id, rcpt) comes from a message carrying
rcpt under that id:
- M itself, received again: before P is impossible (P was the first receive);
  after P is impossible (M stayed invisible until it was deleted);
- a message derived from M (re-enqueue, DLQ copy, redrive): P's re-enqueues
  carry only the recipients P left pending, so not rcpt, and P sent nothing to
  the DLQ; no other processing of M made copies, since there was none;
- another caller message with the same id: the queue contract makes ids unique.
So F is the only one. Every other final event is claimed, so of two final
events for one recipient both are claimed, and the claim keeps the first. A
crash anywhere only removes confirmations (a sender killed between accepting
events and deleting writes none), which makes the export claim more, never less.

Limits of the argument: SQS standard queues may, rarely, deliver a deleted
message again (at-least-once delivery); that copy's final events are claimed only
if it arrives with a receive count above one. A caller that enqueues one id twice
gets a final event per copy. A batch exported before its flush is confirmed is
claimed in full (correct, and as costly as before), so the events' latency to the
export (the Lambda's batching window) is what keeps the claims rare.

The sender reads the claims for a redelivered message (receive count > 1) and
skips recipients that are already final, so the common crash case costs no second
delivery either (unless the export had not yet run; then the claim still keeps
the events exactly-once).

This module holds the rules; `FinalsStore` implementations (DynamoDB in
`dynamo.py`, in memory in `memory.py`) read and write claims and confirmations.
In DynamoDB the cost is one write per flush (its confirmation), one read per
exported batch, and one read and one write per claimed final event; one Query per
redelivered message at the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from quiver.events import FINAL_EVENTS, Record

# A claim outlives every redelivery of its message: SQS keeps a message 14 days at most.
TTL_SECONDS = 15 * 86400

Claim = tuple[str, str]  # (message id, recipient)

# Confirmation items: pk CONFIRMATION_PREFIX + producer id, sk CONFIRMATION_SK, `v`
# (this version), `risky` (message ids whose finals are still claimed), expires_at.
CONFIRMATION_PREFIX = "flush#"
CONFIRMATION_SK = "confirmed"
CONFIRMATION_VERSION = 1


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A flush's confirmation: its messages were deleted in time; `risky` names those
    whose final events must still be claimed."""

    risky: frozenset[str]


def must_claim(confirmation: Confirmation | None) -> Callable[[Claim], bool]:
    """Which final events of a batch need a claim, given its producer's confirmation
    (None: not confirmed, or no producer: all of them)."""
    if confirmation is None:
        return lambda key: True
    risky = confirmation.risky
    return lambda key: key[0] in risky


def confirmation_item(producer: str, risky: Collection[str], *, expires: int
                      ) -> dict[str, object]:
    """The DynamoDB item of a confirmation (wire form)."""
    return {
        "pk": {"S": CONFIRMATION_PREFIX + producer}, "sk": {"S": CONFIRMATION_SK},
        "v": {"N": str(CONFIRMATION_VERSION)},
        "risky": {"L": [{"S": m} for m in sorted(risky)]},
        "expires_at": {"N": str(expires)},
    }


def parse_confirmation(item: dict[str, object] | None) -> Confirmation | None:
    """A confirmation from its item; None for no item, or one of a version or shape this
    code does not know (its batch is then claimed in full: the safe reading)."""
    if not item:
        return None
    version = item.get("v")
    risky = item.get("risky")
    if version != {"N": str(CONFIRMATION_VERSION)} or not isinstance(risky, dict):
        return None
    values = risky.get("L")
    if not isinstance(values, list) or not all(
            isinstance(v, dict) and isinstance(v.get("S"), str) for v in values):
        return None
    return Confirmation(risky=frozenset(v["S"] for v in values))


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
    claims: Callable[[Claim], bool] = lambda key: True,
) -> list[Record]:
    """`FinalsStore.claim` over a store's two primitives: which batch holds each of
    some claims (`claimed_by`), and the writing of new claims (`write`). Only the final
    events `claims` picks (`must_claim`) are claimed; a batch keeps one final event per
    recipient either way."""
    wanted: dict[Claim, Record] = {}
    for record in records:
        key = final_key(record)
        if key is not None and claims(key):
            wanted.setdefault(key, record)
    if not wanted:
        return _first_per_recipient(records, dropped=set())
    claimed = claimed_by(list(wanted))
    dropped = {k for k, batch in claimed.items() if batch != batch_id}
    write(batch_id, [(k, r) for k, r in wanted.items() if k not in claimed])
    return _first_per_recipient(records, dropped=dropped)


def _first_per_recipient(records: Sequence[Record], *, dropped: set[Claim]) -> list[Record]:
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
