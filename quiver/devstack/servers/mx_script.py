"""What the local receiving MX does for a recipient, chosen by its local part.

The same idea as KumoMTA's sink: a test or a demo scripts a fault by writing
it into the recipient address (`tempfail-1@example.test`), so no side channel
is needed to tell the server what to do. The table below is the whole script
language; the server in `mx.py` only interprets it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace


class Action(enum.Enum):
    ACCEPT = "accept"
    REFUSE_RCPT = "refuse_rcpt"  # reply at RCPT, recipient not added
    GREYLIST = "greylist"  # refuse the first RCPT for this exact address, accept later ones
    DEFER_N = "defer_n"  # refuse the first `limit` RCPTs for this exact address, then accept
    CLOSE_421_AFTER = "close_421_after"  # after `limit` accepted messages: 421 and close
    DISCONNECT_IN_DATA = "disconnect_in_data"  # drop TCP after reading part of the body
    TARPIT = "tarpit"  # delay every reply of the transaction
    TOO_MANY = "too_many"  # the transaction takes at most `limit` recipients
    REFUSE_DATA = "refuse_data"  # reply at end of DATA, nothing stored
    # Accept and store like any other, then report after the 250 (mx_report_sender):
    ASYNC_BOUNCE = "async_bounce"  # an RFC 3464 DSN to the MAIL FROM: the mailbox is gone
    COMPLAIN = "complain"  # an RFC 5965 feedback report to the FBL address: marked as spam


@dataclass(frozen=True)
class Behaviour:
    prefix: str
    action: Action
    reply: str = ""
    limit: int = 0


TOO_MANY_REPLY = "452 4.5.3 too many recipients"
BLOCKLISTED_REPLY = ("451 4.7.500 Access denied, banned sending IP. Part of their network is "
                     "on our block list (S3150) blocklisted")
ACCEPT = Behaviour("", Action.ACCEPT)

# Longest matching prefix wins, so `permfail-data` is not read as `permfail`.
BEHAVIOURS: tuple[Behaviour, ...] = (
    Behaviour("tempfail", Action.REFUSE_RCPT, "451 4.3.0 temporary failure, try again later"),
    # A 421 to its RCPT, every time: the server is "closing" on this recipient alone.
    Behaviour("busy421", Action.REFUSE_RCPT, "421 4.7.0 too busy for this recipient"),
    Behaviour("permfail", Action.REFUSE_RCPT, "550 5.1.1 user unknown"),
    Behaviour("permfail-data", Action.REFUSE_DATA, "550 5.1.1 user unknown"),
    Behaviour("greylist", Action.GREYLIST, "451 4.7.1 greylisted, try again later"),
    # `defer2-x@…`: 451 to the first two RCPTs for the address, 250 from the third on
    # (a recipient deferred twice, then delivered); `defer-x` defers once.
    Behaviour("defer", Action.DEFER_N, "451 4.3.0 deferred, try again later", limit=1),
    # `blocklisted-x@…`: an Outlook-style block of the sending IP (S3150) to the first
    # RCPT for the address, then accepted: the adaptive engine's block rules meet the
    # text they are written for, and the mail is delivered once the suspension ends.
    Behaviour("blocklisted", Action.DEFER_N, BLOCKLISTED_REPLY, limit=1),
    Behaviour("close421-", Action.CLOSE_421_AFTER, "421 4.7.0 closing connection", limit=1),
    Behaviour("disconnect-in-data", Action.DISCONNECT_IN_DATA),
    Behaviour("tarpit", Action.TARPIT),
    Behaviour("toomany", Action.TOO_MANY, TOO_MANY_REPLY, limit=2),
    Behaviour("blocked", Action.REFUSE_DATA, "554 5.7.1 message refused as spam"),
    Behaviour("asyncbounce", Action.ASYNC_BOUNCE),
    Behaviour("complain", Action.COMPLAIN),
    # A plain accept: the reader "unsubscribes" afterwards, and a demo does that for
    # it by POSTing the List-Unsubscribe URL of the stored message (RFC 8058).
    Behaviour("unsub", Action.ACCEPT),
    # The same, for a reader whose client mails the List-Unsubscribe mailto instead.
    Behaviour("mailunsub", Action.ACCEPT),
)

_BY_LENGTH = sorted(BEHAVIOURS, key=lambda b: len(b.prefix), reverse=True)
_CLOSE_AFTER = re.compile(r"close421-(\d{1,6})")
_DEFER_N = re.compile(r"defer(\d{1,3})-")


def local_part(address: str) -> str:
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def behaviour_for(address: str) -> Behaviour:
    """The scripted behaviour for a recipient; ACCEPT when nothing matches."""
    local = local_part(address)
    for behaviour in _BY_LENGTH:
        if local.startswith(behaviour.prefix):
            if behaviour.action is Action.CLOSE_421_AFTER:
                match = _CLOSE_AFTER.match(local)
                # `close421-x` without a count closes after the first message.
                return replace(behaviour, limit=max(1, int(match.group(1)))) if match else behaviour
            if behaviour.action is Action.DEFER_N:
                match = _DEFER_N.match(local)
                return replace(behaviour, limit=int(match.group(1))) if match else behaviour
            return behaviour
    return ACCEPT
