"""`quiver demo --via smtp`: the sample messages submitted to the local SMTP listener
(STARTTLS, AUTH as the demo tenant), their envelope fields as X-Quiver-* headers."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence

from quiver.client import OutboundMessage
from quiver.devstack.stack import LocalStack


def control_headers(message: OutboundMessage) -> bytes:
    """The X-Quiver-* fields that carry `message`'s pool, campaign and meta over SMTP
    (the tenant is the one the session authenticated as)."""
    fields = [("Pool", message.pool), ("Campaign", message.campaign)]
    fields += [(f"Meta-{key}", str(value)) for key, value in message.meta.items()]
    return b"".join(f"X-Quiver-{name}: {value}\r\n".encode()
                    for name, value in fields if value is not None)


class SmtpInjector:
    """Submits each batch over one authenticated session (STARTTLS, AUTH as the demo
    tenant); a message is refused when the listener refuses it."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.smtp_ingress is not None
        self._ingress = stack.smtp_ingress

    def inject(self, messages: Sequence[OutboundMessage]) -> int:
        refused = 0
        host, port = self._ingress.address
        context = ssl.create_default_context(cafile=str(self._ingress.ca_file))
        with smtplib.SMTP(host, port, timeout=60) as smtp:
            smtp.starttls(context=context)
            smtp.login(self._ingress.tenant, self._ingress.key)
            for message in messages:
                try:
                    smtp.sendmail(message.sender, list(message.to),
                                  control_headers(message) + message.raw)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError,
                        smtplib.SMTPSenderRefused):
                    refused += 1
        return refused
