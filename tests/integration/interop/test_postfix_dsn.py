"""Postfix's own DSNs, parsed: a private Postfix accepts mail for an unknown user and
for a mailbox over its size limit, fails both at delivery, and mails its RFC 3464
reports to the envelope sender (a VERP-style return path) on a loopback sink. Each
report must parse to the right recipient, status and classification, with the
returned message's identifiers and the return path it was addressed to.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from interop.postfix_bouncer import (
    BOUNCE_DOMAIN,
    DSN_DOMAIN,
    FULL_USER,
    OK_USER,
    PostfixBouncer,
)
from interop.receivers import ReceiverUnavailable, unavailable
from quiver.bounce.dsn import parse_bounce
from quiver.bounce.dsn_types import BounceReport
from quiver.devstack.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.interop]

DSN_TIMEOUT = 120.0


class Sink:
    """An aiosmtpd handler keeping every message with its envelope recipients."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
            self.arrived.notify_all()
        return "250 2.0.0 kept"

    def wait_for(self, count: int, *, timeout: float) -> list[tuple[list[str], bytes]]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.received)


@pytest.fixture
def rig() -> Iterator[tuple[PostfixBouncer, Sink]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    bouncer = PostfixBouncer(port=free_port(), sink_port=controller.port)
    try:
        bouncer.start()
    except ReceiverUnavailable as exc:
        controller.stop()
        unavailable(str(exc))
    try:
        yield bouncer, sink
    finally:
        bouncer.stop()
        controller.stop()


def send(port: int, *, sender: str, rcpt: str, message_id: str, body: str) -> None:
    msg = EmailMessage()
    msg["From"] = "News <news@sender.interop.test>"
    msg["To"] = rcpt
    msg["Subject"] = "DSN interop"
    msg["Message-ID"] = message_id
    msg["Quiver-Id"] = f"t1.c1.{message_id.strip('<>')}.sig=dGVzdA"
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr=sender, to_addrs=[rcpt])


def test_postfix_dsns_parse_to_recipient_status_and_classification(
    rig: tuple[PostfixBouncer, Sink],
) -> None:
    bouncer, sink = rig
    cases = {
        # recipient: (return path, Message-ID, body)
        f"nouser-ann@{DSN_DOMAIN}": (f"b-tok1.k1@{BOUNCE_DOMAIN}", "<unknown-1@sender.test>",
                                      "hello\n"),
        f"{FULL_USER}@{DSN_DOMAIN}": (f"b-tok2.k1@{BOUNCE_DOMAIN}", "<full-1@sender.test>",
                                       "a line of the newsletter\n" * 20),
    }
    for rcpt, (sender, message_id, body) in cases.items():
        send(bouncer.port, sender=sender, rcpt=rcpt, message_id=message_id, body=body)
    # Delivered normally, so no DSN: the instance bounces only what fails.
    send(bouncer.port, sender=f"b-tok3.k1@{BOUNCE_DOMAIN}", rcpt=f"{OK_USER}@{DSN_DOMAIN}",
         message_id="<ok-1@sender.test>", body="fine\n")

    received = sink.wait_for(len(cases), timeout=DSN_TIMEOUT)
    assert len(received) == len(cases), bouncer.log_text()[-3000:]

    seen: dict[str, BounceReport] = {}
    for rcpt_tos, raw in received:
        result = parse_bounce(raw)
        assert isinstance(result, BounceReport), (result, raw[:2000])
        assert result.format == "rfc3464"
        assert len(result.recipients) == 1
        failed = result.recipients[0]
        seen[failed.recipient] = result
        sender, message_id, _ = cases[failed.recipient]
        assert rcpt_tos == [sender]
        assert result.addressed_to == sender
        assert result.return_path_local == sender.partition("@")[0]
        assert result.original_sender == sender
        assert result.reporting_mta == f"mx.{DSN_DOMAIN}"
        assert result.original is not None
        assert result.original.message_id == message_id
        assert result.original.quiver_id == f"t1.c1.{message_id.strip('<>')}.sig=dGVzdA"
        print(f"\n{failed.recipient}: status {failed.status}, "
              f"{failed.classification.kind}/{failed.classification.category}; "
              f"diagnostic: {failed.diagnostic}")

    assert set(seen) == set(cases)
    unknown = seen[f"nouser-ann@{DSN_DOMAIN}"].recipients[0]
    assert unknown.status == "5.1.1"
    assert (unknown.classification.kind, unknown.classification.category) == (
        "hard", "bad-mailbox")
    full = seen[f"{FULL_USER}@{DSN_DOMAIN}"].recipients[0]
    assert full.status in ("5.2.2", "4.2.2")
    assert (full.classification.kind, full.classification.category) == ("soft", "mailbox-full")
