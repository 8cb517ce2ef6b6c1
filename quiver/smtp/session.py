"""One SMTP connection to a receiving MX, direct or through an HAProxy egress node.

Safety lives here so no caller can skip it: the exact IP about to be connected is
checked against the destination guard; through a proxy the PROXY header is the
first thing written; STARTTLS always verifies against the MX host name when
verification is on (aiosmtplib's automatic STARTTLS is disabled because with a
pre-connected socket it has no name to check against). aiosmtplib normalises
line endings and dot-stuffs the message in its framing code.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPResponseException, SMTPServerDisconnected

from quiver import proxy_protocol
from quiver.routing.safety import DestinationGuard
from quiver.smtp.reply import Reply, local_reply, parse_reply


@dataclass(frozen=True, slots=True)
class Target:
    mx_name: str
    ip: str
    port: int


class SessionError(Exception):
    """The connection failed as a whole; `reply` is what the events carry.

    `stage` says where: 'connect' (TCP or proxy), 'banner', 'ehlo', 'tls', or
    'transaction' (the connection dropped mid-transaction).
    """

    def __init__(self, stage: str, reply: Reply, target: Target | None = None) -> None:
        self.stage = stage
        self.reply = reply
        self.target = target
        super().__init__(f"{stage}: {reply}")


@dataclass(frozen=True, slots=True)
class Egress:
    """How to leave: bind `local_ip` directly, or go through `frontend` with a PROXY header."""

    ehlo: str
    local_ip: str | None = None
    frontend: tuple[str, int] | None = None
    proxy_version: int = 2


@dataclass(slots=True)
class TransactionResult:
    """Per-recipient outcome: the RCPT reply if refused there, else the DATA reply."""

    replies: dict[str, Reply] = field(default_factory=dict)


class SmtpSession:
    def __init__(self, smtp: aiosmtplib.SMTP, *, target: Target, tls_version: str | None) -> None:
        self._smtp = smtp
        self.target = target
        self.tls_version = tls_version
        self.messages_sent = 0

    @classmethod
    async def open(
        cls,
        *,
        target: Target,
        egress: Egress,
        guard: DestinationGuard,
        tls_context: ssl.SSLContext | None,
        connect_timeout: float,
        command_timeout: float,
    ) -> SmtpSession:
        if (why := guard.reason(target.ip)) is not None:
            raise SessionError(
                "connect", local_reply(550, "5.4.4", f"refusing to connect to {why}")
            )
        sock = await _connect(target, egress, connect_timeout)
        smtp = aiosmtplib.SMTP(
            sock=sock, local_hostname=egress.ehlo, timeout=command_timeout, start_tls=False,
        )
        try:
            await smtp.connect(timeout=connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            sock.close()
            raise SessionError("banner", parse_reply(exc.code, exc.message)) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            sock.close()
            raise SessionError(
                "banner", local_reply(421, "4.4.2", f"no banner from {target.mx_name}: {exc}")
            ) from None
        session = cls(smtp, target=target, tls_version=None)
        await session._hello(tls_context)
        return session

    async def _hello(self, tls_context: ssl.SSLContext | None) -> None:
        try:
            await self._smtp.ehlo()
        except SMTPResponseException as exc:
            self._smtp.close()
            raise SessionError("ehlo", parse_reply(exc.code, exc.message)) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._smtp.close()
            raise SessionError("ehlo", local_reply(421, "4.4.2", f"EHLO failed: {exc}")) from None
        if tls_context is None or not self._smtp.supports_extension("starttls"):
            return
        try:
            await self._smtp.starttls(
                server_hostname=self.target.mx_name, tls_context=tls_context
            )
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError, TimeoutError) as exc:
            self._smtp.close()
            # A failed handshake never falls back to plaintext on this connection:
            # the recipients are deferred and the site backs off.
            raise SessionError(
                "tls", local_reply(421, "4.7.5", f"STARTTLS with {self.target.mx_name}: {exc}")
            ) from None
        transport = self._smtp.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        self.tls_version = ssl_object.version() if ssl_object is not None else None

    async def send(
        self, *, sender: str, recipients: Sequence[str], message: bytes
    ) -> TransactionResult:
        """One transaction; SessionError('transaction') if the connection is lost."""
        result = TransactionResult()
        if not self._smtp.is_connected:
            # Closed while idle (the server's timeout, or its proxy died): nothing of
            # this message was sent, so it is not its attempt.
            raise SessionError(
                "reused", local_reply(421, "4.4.2", "connection closed while idle"))
        try:
            try:
                await self._smtp.mail(sender)
            except SMTPResponseException as exc:
                reply = parse_reply(exc.code, exc.message)
                return TransactionResult({r: reply for r in recipients})
            except (SMTPServerDisconnected, OSError) as exc:
                if not self.messages_sent:
                    raise
                # A reused connection the server had already closed (idle timeout):
                # nothing of this message was sent, so it is not its failure.
                self._smtp.close()
                raise SessionError(
                    "reused", local_reply(421, "4.4.2", f"connection closed while idle: {exc}")
                ) from None
            accepted = []
            for rcpt in recipients:
                try:
                    await self._smtp.rcpt(rcpt)
                    accepted.append(rcpt)
                except SMTPResponseException as exc:
                    # A recipient refused at RCPT does not stop the others.
                    result.replies[rcpt] = parse_reply(exc.code, exc.message)
            if accepted:
                try:
                    response = await self._smtp.data(message)
                    reply = parse_reply(response.code, response.message)
                except SMTPResponseException as exc:
                    reply = parse_reply(exc.code, exc.message)
                for rcpt in accepted:
                    result.replies[rcpt] = reply
            else:
                await self._smtp.rset()
        except SMTPServerDisconnected as exc:
            self._smtp.close()
            raise SessionError(
                "transaction", local_reply(451, "4.4.2", f"connection lost: {exc}")
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._smtp.close()
            raise SessionError(
                "transaction", local_reply(451, "4.4.2", f"transaction failed: {exc}")
            ) from None
        self.messages_sent += 1
        return result

    @property
    def is_open(self) -> bool:
        return self._smtp.is_connected

    async def close(self) -> None:
        if not self._smtp.is_connected:
            return
        try:
            await asyncio.wait_for(self._smtp.quit(), timeout=5.0)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._smtp.close()


async def _connect(target: Target, egress: Egress, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if egress.frontend is not None:
            peer = egress.frontend
        else:
            peer = (target.ip, target.port)
            if egress.local_ip:
                sock.bind((egress.local_ip, 0))
        await asyncio.wait_for(loop.sock_connect(sock, peer), timeout)
        if egress.frontend is not None:
            # The header names the destination; the proxy connects onward from its
            # source IP. It must precede any byte of SMTP.
            local = sock.getsockname()
            header = proxy_protocol.encode(
                egress.proxy_version, src=(local[0], local[1]), dst=(target.ip, target.port)
            )
            await asyncio.wait_for(loop.sock_sendall(sock, header), timeout)
    except (OSError, TimeoutError) as exc:
        sock.close()
        where = f"proxy {peer[0]}:{peer[1]}" if egress.frontend else f"{target.ip}:{target.port}"
        text = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SessionError(
            "connect", local_reply(421, "4.4.1", f"connect to {where}: {text}")
        ) from None
    return sock
