"""Two sources, twenty connections each, into an Exim that takes five at a time.

Exim's `smtp_accept_max` refuses every connection past its limit at the greeting
(`421 Too many concurrent SMTP connections`). Each source may open twenty connections
(the stack policy's max_connections), so two sources sending to one MX would open up
to forty: the sender must hold the connections to one MX host across its sources, and
a greeting-time "too many connections" must lower that host's concurrency and leave
its queued mail waiting for the connections that remain, not back the site off and
defer mail that was never tried.

Every message is delivered exactly once, and no `deferred` event is written.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from stackrig import Running, enqueue

from interop.exim_receiver import EximReceiver
from interop.interop_rig import (
    EXIM_CAPPED,
    copies_of,
    egress,
    finals_by_recipient,
    ordinary,
    sender,
)
from interop.receivers import ReceiverUnavailable, unavailable
from quiver.client import OutboundMessage

pytestmark = [pytest.mark.integration, pytest.mark.interop]

ACCEPT_MAX = 5
MESSAGES = 100
FINALS_TIMEOUT = 180.0
STORE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def capped_exim(stack: Running, mx_port: int, mx_cert: tuple[Path, Path],
                exim_nameserver: str) -> Iterator[EximReceiver]:
    cert, key = mx_cert
    exim = EximReceiver(site=EXIM_CAPPED, port=mx_port, cert=cert, key=key,
                        nameserver=exim_nameserver, accept_max=ACCEPT_MAX)
    try:
        exim.start()
    except ReceiverUnavailable as error:
        exim.stop()
        unavailable(str(error))
    try:
        yield exim
    finally:
        exim.stop()


def batch() -> list[OutboundMessage]:
    # Pool `pair`: both sources.
    return [ordinary(f"cap-{i:04d}", [f"user{i}@{EXIM_CAPPED.domain}"], pool="pair")
            for i in range(MESSAGES)]


def test_two_sources_into_an_mx_taking_five_connections_defer_nothing(
        stack: Running, mx_port: int, capped_exim: EximReceiver) -> None:
    msgs = batch()
    with egress(stack, "cap", mx_port=mx_port) as config, sender(stack, "cap", config):
        enqueue(stack, msgs)
        events = stack.events_for({m.id for m in msgs}, finals=len(msgs),
                                  timeout=FINALS_TIMEOUT)
    finals = finals_by_recipient(events, msgs)
    deferred = [e for e in events if e["event"] == "deferred"]
    deadline = time.monotonic() + STORE_TIMEOUT
    while len(capped_exim.copies()) < len(msgs) and time.monotonic() < deadline:
        time.sleep(0.2)
    copies = capped_exim.copies()
    per_message = Counter(len(copies_of(copies, m)) for m in msgs)
    sources = Counter(e["source"] for e in finals.values() if e["event"] == "delivered")
    print(f"interop exim-capped (smtp_accept_max={ACCEPT_MAX}): {len(msgs)} messages from "
          f"sources {dict(sources)}; copies per message {dict(per_message)}; "
          f"connections Exim refused: {capped_exim.refused_connections()}; "
          f"deferred events: {len(deferred)} "
          f"({Counter(e['response']['text'] for e in deferred).most_common(2)})")

    not_delivered = [e for e in finals.values() if e["event"] != "delivered"]
    assert not not_delivered, not_delivered[:3]
    assert per_message == {1: len(msgs)}, per_message
    assert not deferred, [(e["rcpt"], e["response"]) for e in deferred[:5]]
