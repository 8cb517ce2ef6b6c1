"""One SMTP session with a receiving MX, direct or through an HAProxy egress node.

Safety lives here and below (`framing`, `wire`) so no caller can skip it: the
exact IP about to be connected is checked against the destination guard; through
a proxy the PROXY header is the first thing written; STARTTLS always verifies
against the MX host name when verification is on, and a failed handshake never
falls back to plaintext on that connection.

A transaction is one write and one wait when the server offers PIPELINING
(RFC 2920): MAIL, every RCPT and DATA go together, then the body after the 354.
Without it each command waits for its reply, as RFC 5321 requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from quiver import proxy_protocol
from quiver.routing.safety import DestinationGuard
from quiver.smtp import framing
from quiver.smtp.reader import RawReply
from quiver.smtp.reply import Reply, local_reply, parse_reply
from quiver.smtp.wire import Disconnected, ReplyTimeout, SmtpWire, WireError

# QUIT is a courtesy: the session is over either way, so its wait is short.
QUIT_TIMEOUT = 2.0
_RSET = b"RSET\r\n"
_DATA = b"DATA\r\n"
_QUIT = b"QUIT\r\n"
_STARTTLS = b"STARTTLS\r\n"


@dataclass(frozen=True, slots=True)
class Target:
    mx_name: str
    ip: str
    port: int


class SessionError(Exception):
    """The connection failed as a whole; `reply` is what the events carry.

    `stage` says where: 'connect' (TCP or proxy), 'banner', 'ehlo', 'tls',
    'transaction' (the connection dropped mid-transaction), or 'reused' (a reused
    connection turned out closed before this transaction sent anything).
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


class _ClosedWhileIdle(Exception):
    pass


def _positive(reply: RawReply) -> bool:
    return 200 <= reply[0] < 300


def _reply(raw: RawReply) -> Reply:
    return parse_reply(raw[0], raw[1])


class SmtpSession:
    def __init__(
        self, wire: SmtpWire, *, target: Target, ehlo: str, command_timeout: float
    ) -> None:
        self._wire = wire
        self._ehlo_name = ehlo
        self._timeout = command_timeout
        self.target = target
        self.tls_version: str | None = None
        self.extensions: frozenset[str] = frozenset()
        self.messages_sent = 0
        # A transaction was opened (MAIL accepted) and not completed: the next one
        # starts with RSET.
        self._needs_rset = False

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
        loop = asyncio.get_running_loop()
        wire = SmtpWire(loop)
        try:
            await loop.create_connection(lambda: wire, sock=sock)
        except OSError as exc:
            sock.close()
            raise SessionError(
                "connect", local_reply(421, "4.4.1", f"connect to {target.ip}: {exc}")
            ) from None
        session = cls(wire, target=target, ehlo=egress.ehlo, command_timeout=command_timeout)
        try:
            await session._greet(tls_context, connect_timeout)
        except BaseException:
            wire.abort()
            raise
        return session

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def is_open(self) -> bool:
        return self._wire.usable

    async def _greet(self, tls_context: ssl.SSLContext | None, connect_timeout: float) -> None:
        try:
            (banner,) = await self._wire.exchange(None, replies=1, timeout=connect_timeout)
        except WireError as exc:
            raise SessionError("banner", local_reply(
                421, "4.4.2", f"no banner from {self.target.mx_name}: {exc}")) from None
        if banner[0] != 220:
            raise SessionError("banner", _reply(banner))
        await self._hello()
        if tls_context is None or "STARTTLS" not in self.extensions:
            return
        try:
            (answer,) = await self._wire.exchange(_STARTTLS, replies=1, timeout=self._timeout)
            if answer[0] != 220:
                raise SessionError("tls", local_reply(
                    421, "4.7.5", f"STARTTLS with {self.target.mx_name}: refused: "
                    f"{answer[0]} {answer[1]}"))
            # The handshake belongs to setting up the connection: the connect timeout.
            self.tls_version = await self._wire.start_tls(
                tls_context, server_hostname=self.target.mx_name, timeout=connect_timeout)
        except (WireError, ssl.SSLError, OSError, TimeoutError) as exc:
            # The recipients are deferred and the site backs off; never plaintext here.
            raise SessionError("tls", local_reply(
                421, "4.7.5", f"STARTTLS with {self.target.mx_name}: {exc}")) from None
        # RFC 3207 4.2: what the server said before TLS is forgotten; ask again.
        self.extensions = frozenset()
        await self._hello()

    async def _hello(self) -> None:
        try:
            (reply,) = await self._wire.exchange(
                framing.ehlo(self._ehlo_name), replies=1, timeout=self._timeout)
            if 500 <= reply[0] < 600 and reply[0] != 554:
                # EHLO not understood (RFC 5321 4.1.4): plain HELO, no extensions.
                (reply,) = await self._wire.exchange(
                    framing.ehlo(self._ehlo_name, verb="HELO"), replies=1,
                    timeout=self._timeout)
                if _positive(reply):
                    return
        except WireError as exc:
            raise SessionError("ehlo", local_reply(421, "4.4.2", f"EHLO failed: {exc}")) from None
        if not _positive(reply):
            raise SessionError("ehlo", _reply(reply))
        lines = reply[1].split("\n")[1:]
        self.extensions = frozenset(line.split(" ", 1)[0].upper() for line in lines if line)

    async def send(
        self, *, sender: str, recipients: Sequence[str], message: bytes
    ) -> TransactionResult:
        """One transaction; SessionError('transaction') if the connection is lost in it,
        SessionError('reused') if it was found closed before anything was sent."""
        if not self._wire.usable:
            # Closed while idle (the server's timeout, or its proxy died): nothing of
            # this message was sent, so it is not its attempt.
            raise SessionError("reused", self._idle_close_reply())
        commands = framing.envelope(sender, recipients)
        try:
            if self.pipelining:
                return await self._pipelined(commands, recipients, message)
            return await self._lockstep(commands, recipients, message)
        except _ClosedWhileIdle:
            self._wire.abort()
            raise SessionError("reused", self._idle_close_reply()) from None
        except WireError as exc:
            self._wire.abort()
            kind = "timed out" if isinstance(exc, ReplyTimeout) else "connection lost"
            raise SessionError(
                "transaction", local_reply(451, "4.4.2", f"{kind}: {exc}")) from None

    async def _first(self, data: bytes | list[bytes], replies: int) -> list[RawReply]:
        """The transaction's first exchange. On a reused connection, a close before any
        reply means the server had dropped it while idle: nothing was delivered."""
        try:
            return await self._wire.exchange(data, replies=replies, timeout=self._timeout)
        except Disconnected as exc:
            if not exc.replies and self.messages_sent:
                raise _ClosedWhileIdle from None
            raise

    async def _pipelined(
        self, commands: list[bytes], recipients: Sequence[str], message: bytes
    ) -> TransactionResult:
        rset = self._needs_rset
        group = [_RSET, *commands, _DATA] if rset else [*commands, _DATA]
        try:
            replies = await self._first(group, len(group))
        except WireError as exc:
            # The server answered part of the group, then closed: what it said before
            # closing is what the recipients got.
            got = exc.replies
            if rset and got and got[0][0] != 421:
                got = got[1:]  # past RSET's reply, to MAIL's
            if got and not _positive(got[0]):
                return self._all(recipients, got[0])
            closing = next((r for r in got[1:] if r[0] == 421), None)
            if closing is None:
                raise
            return self._closing(recipients, got[1:], closing)
        if rset:
            if replies[0][0] == 421:
                return self._all(recipients, replies[0])
            replies = replies[1:]
        self._needs_rset = False
        mail, data = replies[0], replies[-1]
        if not _positive(mail):
            # No transaction was opened: RCPT and DATA failed as "bad sequence".
            if data[0] == 354:
                await self._empty_data()
            return self._all(recipients, mail)
        closing = next((r for r in replies[1:-1] if r[0] == 421), None)
        if closing is not None:
            return self._closing(recipients, replies[1:-1], closing)
        result, accepted = self._rcpt_results(recipients, replies[1:-1])
        if accepted and data[0] == 354:
            return await self._finish(result, accepted, message)
        if data[0] == 354:
            # RFC 2920 3.1: DATA accepted although every RCPT failed: end it empty.
            await self._empty_data()
        else:
            self._needs_rset = True
            refused = _reply(data)
            for rcpt in accepted:
                result.replies[rcpt] = refused
        return result

    async def _lockstep(
        self, commands: list[bytes], recipients: Sequence[str], message: bytes
    ) -> TransactionResult:
        wire, timeout = self._wire, self._timeout
        if self._needs_rset:
            (reply,) = await self._first(_RSET, 1)
            if reply[0] == 421:
                return self._all(recipients, reply)
            self._needs_rset = False
            (mail,) = await wire.exchange(commands[0], replies=1, timeout=timeout)
        else:
            (mail,) = await self._first(commands[0], 1)
        if not _positive(mail):
            return self._all(recipients, mail)
        self._needs_rset = True
        rcpt_replies: list[RawReply] = []
        for command in commands[1:]:
            (reply,) = await wire.exchange(command, replies=1, timeout=timeout)
            if reply[0] == 421:
                return self._closing(recipients, rcpt_replies, reply)
            rcpt_replies.append(reply)
        result, accepted = self._rcpt_results(recipients, rcpt_replies)
        if not accepted:
            return result
        (data,) = await wire.exchange(_DATA, replies=1, timeout=timeout)
        if data[0] != 354:
            refused = _reply(data)
            for rcpt in accepted:
                result.replies[rcpt] = refused
            return result
        return await self._finish(result, accepted, message)

    async def _finish(
        self, result: TransactionResult, accepted: list[str], message: bytes
    ) -> TransactionResult:
        (final,) = await self._wire.exchange(
            framing.data_payload(message), replies=1, timeout=self._timeout)
        # After the reply to the end of data the server has reset the transaction,
        # whatever the reply said.
        self._needs_rset = False
        self.messages_sent += 1
        reply = _reply(final)
        for rcpt in accepted:
            result.replies[rcpt] = reply
        return result

    async def _empty_data(self) -> None:
        await self._wire.exchange(framing.END_OF_DATA, replies=1, timeout=self._timeout)

    @staticmethod
    def _rcpt_results(
        recipients: Sequence[str], replies: Sequence[RawReply]
    ) -> tuple[TransactionResult, list[str]]:
        result = TransactionResult()
        accepted = []
        for rcpt, reply in zip(recipients, replies, strict=False):
            if _positive(reply):
                accepted.append(rcpt)
            else:
                # A recipient refused at RCPT does not stop the others.
                result.replies[rcpt] = _reply(reply)
        return result, accepted

    @staticmethod
    def _closing(
        recipients: Sequence[str], rcpt_replies: Sequence[RawReply], closing: RawReply
    ) -> TransactionResult:
        """The server said 421 in the middle of the RCPTs: the transaction cannot
        finish. A recipient refused before that keeps its refusal; every other one,
        accepted or never asked about, gets the 421 (not its failure: the server's)."""
        reply = _reply(closing)
        result = TransactionResult({r: reply for r in recipients})
        for rcpt, raw in zip(recipients, rcpt_replies, strict=False):
            if not _positive(raw) and raw[0] != 421:
                result.replies[rcpt] = _reply(raw)
        return result

    @staticmethod
    def _all(recipients: Sequence[str], raw: RawReply) -> TransactionResult:
        reply = _reply(raw)
        return TransactionResult({r: reply for r in recipients})

    def _idle_close_reply(self) -> Reply:
        said = self._wire.unsolicited
        text = "connection closed while idle"
        if said is not None:
            text += f" ({said[0]} {said[1][:200]})"
        return local_reply(421, "4.4.2", text)

    async def close(self) -> None:
        wire = self._wire
        if wire.usable:
            with contextlib.suppress(WireError):
                await wire.exchange(_QUIT, replies=1, timeout=QUIT_TIMEOUT)
        wire.close()


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
