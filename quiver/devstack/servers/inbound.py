"""SES inbound on loopback: an SMTP server that stores mail the way a receipt rule does.

In AWS the bounce domains' MX is SES, whose receipt rules write each message raw to
the inbound bucket, under the prefix of the rule it matched, with SES's own
`Return-Path` and `Received` fields on top; S3 then notifies the intake queues. Here
this server takes SES's place: it accepts only recipients some rule of the policy
covers (`quiver.intake.receipt`, the same list CDK deploys), refuses the rest as
SES does, and puts each message into the inbound bucket on moto's server, whose
notifications feed the same intake queues. It answers 250 only once the object is
stored, so a DSN or report it accepted is never lost; a failed put answers 451 and
the sending MTA tries again.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from quiver.devstack.loop_thread import LoopThread
from quiver.intake.receipt import ReceiptRule, prefixes_for

HOSTNAME = "inbound-smtp.quiver.local.test"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# SES accepts up to 50 recipients per message and messages up to 40 MB.
MAX_RECIPIENTS = 50
DATA_SIZE_LIMIT = 40 * 1024 * 1024
NO_RULE_REPLY = "550 5.1.1 Mailbox does not exist (no receipt rule covers this recipient)"


@dataclass(frozen=True, slots=True)
class StoredMail:
    key: str
    mail_from: str
    recipients: tuple[str, ...]


def ses_head(*, mail_from: str, recipients: list[str], helo: str, peer_ip: str,
             smtp_id: str) -> bytes:
    """The fields SES adds on top of a stored message. `Received` names the envelope
    recipient in its `for` clause only when the message had one (RFC 5321 4.4), as
    SES does; the intakes read the recipient from there."""
    for_clause = f"\r\n for {recipients[0]}" if len(recipients) == 1 else ""
    return (f"Return-Path: <{mail_from}>\r\n"
            f"Received: from {helo} ({helo} [{peer_ip}])\r\n"
            f" by {HOSTNAME} with SMTP id {smtp_id}{for_clause};\r\n"
            f" {formatdate(usegmt=True)}\r\n"
            "X-SES-Spam-Verdict: PASS\r\nX-SES-Virus-Verdict: PASS\r\n").encode()


class _Rules:
    """aiosmtpd handler: the receipt rules at RCPT, the bucket at the end of DATA."""

    def __init__(self, *, rules: tuple[ReceiptRule, ...], s3: Any, bucket: str) -> None:
        self.rules = rules
        self._s3 = s3
        self._bucket = bucket
        self._lock = threading.Lock()
        self.stored: list[StoredMail] = []

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        if not prefixes_for(self.rules, address):
            return NO_RULE_REPLY
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        recipients = list(envelope.rcpt_tos)
        # aiosmtpd gives the null sender as "<>"; SES writes it as `Return-Path: <>`.
        mail_from = (envelope.mail_from or "").strip("<>")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        smtp_id = secrets.token_hex(20)
        head = ses_head(mail_from=mail_from, recipients=recipients,
                        helo=session.host_name or "unknown", peer_ip=str(peer), smtp_id=smtp_id)
        # Each rule's S3 action writes the message once under its own prefix.
        prefixes: list[str] = []
        for rcpt in recipients:
            prefixes += [p for p in prefixes_for(self.rules, rcpt) if p not in prefixes]
        try:
            for prefix in prefixes:
                key = f"{prefix}{smtp_id}"
                # boto3 blocks: off the loop, so other sessions keep being served.
                await asyncio.to_thread(self._s3.put_object, Bucket=self._bucket, Key=key,
                                        Body=head + raw)
                with self._lock:
                    self.stored.append(StoredMail(key, mail_from, tuple(recipients)))
        except Exception as exc:  # the store failed: the sending MTA keeps the mail
            return f"451 4.3.0 could not store the message ({type(exc).__name__}), try later"
        return f"250 2.0.0 Ok {smtp_id}"


class InboundSmtp:
    """The server on its own loop thread; listens when constructed (`address`)."""

    def __init__(self, *, rules: tuple[ReceiptRule, ...], s3: Any, bucket: str,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = _Rules(rules=rules, s3=s3, bucket=bucket)
        self._thread = LoopThread("quiver-local-inbound")
        self._server: asyncio.Server | None = None
        try:
            self.address: tuple[str, int] = self._thread.run(self._start(host, port),
                                                             timeout=START_TIMEOUT)
        except BaseException:
            self._thread.halt(timeout=STOP_TIMEOUT)
            raise

    async def _start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self._handler, hostname=HOSTNAME, data_size_limit=DATA_SIZE_LIMIT,
                         enable_SMTPUTF8=True, loop=loop),
            host, port)
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def set_rules(self, rules: tuple[ReceiptRule, ...]) -> None:
        """The receipt rules from now on (the local stack knows them once its policy is
        written, after the MX that mails to this server has started)."""
        self._handler.rules = rules

    def stored(self) -> list[StoredMail]:
        with self._handler._lock:
            return list(self._handler.stored)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        try:
            self._thread.run(close(), timeout=STOP_TIMEOUT)
        finally:
            self._thread.halt(timeout=STOP_TIMEOUT)
