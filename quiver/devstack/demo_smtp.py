"""`quiver demo --via smtp`: the sample messages submitted to the local SMTP listener
(STARTTLS, AUTH as the demo tenant), their envelope fields as X-Quiver-* headers."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence

from quiver.client import OutboundMessage
from quiver.devstack.progress import Progress
from quiver.devstack.smtp_ingress import LocalSmtpIngress


def control_headers(message: OutboundMessage) -> bytes:
    """The X-Quiver-* fields that carry `message`'s pool, campaign and meta over SMTP
    (the tenant is the one the session authenticated as)."""
    fields = [("Pool", message.pool), ("Campaign", message.campaign)]
    fields += [(f"Meta-{key}", str(value)) for key, value in message.meta.items()]
    return b"".join(f"X-Quiver-{name}: {value}\r\n".encode()
                    for name, value in fields if value is not None)


def submit(ingress: LocalSmtpIngress, messages: Sequence[OutboundMessage], label: str) -> int:
    """Submit each message over one authenticated session; how many were refused."""
    bar = Progress(label, len(messages))
    refused = 0
    host, port = ingress.address
    context = ssl.create_default_context(cafile=str(ingress.ca_file))
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        smtp.starttls(context=context)
        smtp.login(ingress.tenant, ingress.key)
        for i, message in enumerate(messages, 1):
            try:
                smtp.sendmail(message.sender, list(message.to),
                              control_headers(message) + message.raw)
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError,
                    smtplib.SMTPSenderRefused):
                refused += 1
            bar.update(i)
    bar.finish(len(messages))
    return refused
