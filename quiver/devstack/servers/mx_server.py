"""The local MX's SMTP server: aiosmtpd plus the recipient-scripted behaviours.

Runs on whichever event loop calls `MxEngine.start()`; `mx.py` runs it in a
thread of the caller's process or as a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from quiver.devstack.servers.mx_report_sender import ReportSender, check_relay, load_reporter
from quiver.devstack.servers.mx_script import TOO_MANY_REPLY, Action, behaviour_for
from quiver.devstack.servers.mx_store import MxStore

DEFAULT_HOSTNAME = "mx.local.test"
DEFAULT_TARPIT_SECONDS = 2.0
# Gmail and Microsoft accept 100 recipients per transaction; a sender that
# batches more must split, and this default makes the local MX say so.
DEFAULT_MAX_RCPTS_PER_TXN = 100
# 32 MiB: above any provider's limit, so size refusals come from the sender's own checks.
DATA_SIZE_LIMIT = 32 * 1024 * 1024
# A disconnect-in-data waits this long for the first body line before dropping anyway.
DISCONNECT_READ_TIMEOUT = 30.0
# What a busy server says instead of its greeting (RFC 5321 3.8: 421 and close).
BUSY_BANNER = "421 4.7.0 too busy, try again later"
# Many senders may connect at once in benchmarks; the default backlog of 100 would
# turn a burst into SYN retries that look like server slowness.
LISTEN_BACKLOG = 1024

_Handler = Callable[[str | None], Awaitable[None]]
# Asked at the end of each DATA with the client's IP: None to accept the message, or
# the reply that refuses it (a 421 also closes the connection, as RFC 5321 3.8 says).
Gate = Callable[[str], str | None]


@dataclass(frozen=True)
class MxConfig:
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    offer_starttls: bool = True
    offer_pipelining: bool = True
    hostname: str = DEFAULT_HOSTNAME
    tarpit_seconds: float = DEFAULT_TARPIT_SECONDS
    max_rcpts_per_txn: int = DEFAULT_MAX_RCPTS_PER_TXN
    # A busy server: only every n-th connection is greeted, the others get BUSY_BANNER
    # and are closed (0: greet all). In-process servers only (`start_mx`).
    busy_every: int = 0
    # Where the reports of `asyncbounce…` and `complain…` recipients go (host, port on
    # loopback): the SMTP server standing in for the bounce domain's MX and for SES
    # inbound. A real MTA would look up the MX of the return path's domain; on
    # loopback every server needs its own port, so the relay is named here. None:
    # those recipients are only accepted, and reports.jsonl records "not_sent".
    report_relay: tuple[str, int] | None = None
    # Where feedback reports are addressed (the sender's FBL address).
    fbl_address: str | None = None
    # The mailbox provider's reporting domain: feedback reports come from
    # `reporter_address` (default fbl@<domain>), DKIM-signed with the RSA key in
    # `reporter_key_file` under `reporter_selector` (both or neither; neither: unsigned).
    reporter_domain: str | None = None
    reporter_address: str | None = None
    reporter_selector: str | None = None
    reporter_key_file: Path | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.offer_starttls or self.tls_cert is None:
            return None
        if self.tls_key is None:
            raise ValueError("tls_cert given without tls_key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass
class _Transaction:
    """Script state for one MAIL..DATA transaction; reset with the envelope."""

    rcpt_limit: int
    tarpit: bool = False
    disconnect_in_data: bool = False
    data_reply: str = ""


class _Hooks:
    """aiosmtpd handler: server-wide state (store, greylist) and the script."""

    def __init__(self, config: MxConfig, store: MxStore, reports: ReportSender,
                 gate: Gate | None = None) -> None:
        self.config = config
        self.store = store
        self.reports = reports
        self.gate = gate
        self.greylisted: set[str] = set()
        self.deferred: dict[str, int] = {}  # RCPTs refused so far per defer<N>- address
        self.live: set[_Connection] = set()
        self.connections = 0

    def refuse_connection(self) -> bool:
        """Whether a busy server turns this new connection away (see MxConfig.busy_every)."""
        self.connections += 1
        every = self.config.busy_every
        return every > 0 and self.connections % every != 0

    async def handle_EHLO(
        self,
        server: _Connection,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.config.offer_pipelining and len(responses) > 1:
            # aiosmtpd reads pipelined commands line by line anyway; saying so lets
            # clients send MAIL, RCPT and DATA in one write (RFC 2920).
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self,
        server: _Connection,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._rcpt(server, envelope, address, rcpt_options)
        # Every RCPT, whatever its reply: a test can tell an address was never tried.
        self.store.rcpt_seen(address, reply)
        return reply

    def _rcpt(self, server: _Connection, envelope: Envelope, address: str,
              rcpt_options: list[str]) -> str:
        behaviour = behaviour_for(address)
        txn = server.txn
        limit = txn.rcpt_limit
        if behaviour.action is Action.TOO_MANY:
            limit = min(limit, behaviour.limit)
        if len(envelope.rcpt_tos) >= limit:
            return TOO_MANY_REPLY
        if behaviour.action is Action.REFUSE_RCPT:
            return behaviour.reply
        if behaviour.action is Action.GREYLIST:
            key = address.lower()
            if key not in self.greylisted:
                self.greylisted.add(key)
                return behaviour.reply
        if behaviour.action is Action.DEFER_N:
            key = address.lower()
            refused = self.deferred.get(key, 0)
            if refused < behaviour.limit:
                self.deferred[key] = refused + 1
                return behaviour.reply
        txn.rcpt_limit = limit
        if behaviour.action is Action.TARPIT:
            txn.tarpit = True  # this very reply is already delayed by push()
        elif behaviour.action is Action.DISCONNECT_IN_DATA:
            txn.disconnect_in_data = True
        elif behaviour.action is Action.REFUSE_DATA:
            txn.data_reply = txn.data_reply or behaviour.reply
        elif behaviour.action is Action.CLOSE_421_AFTER:
            server.close_after = min(server.close_after or behaviour.limit, behaviour.limit)
            server.close_reply = behaviour.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Connection, session: Session, envelope: Envelope) -> str:
        txn = server.txn
        if txn.tarpit:
            # The final reply is pushed after aiosmtpd resets the transaction, so it is
            # delayed here rather than in push().
            await asyncio.sleep(self.config.tarpit_seconds)
        if txn.data_reply:
            return txn.data_reply
        if self.gate is not None:
            refusal = self.gate(server.peer_ip)
            if refusal is not None:
                server.close_after_reply = refusal.startswith("421")
                return refusal
        content: bytes = envelope.original_content or b""
        number = self.store.record(
            peer=(server.peer_ip, server.peer_port),
            helo=session.host_name,
            mail_from=envelope.mail_from or "",
            rcpt_tos=envelope.rcpt_tos,
            content=content,
            tls=server.tls_version(),
        )
        server.accepted += 1
        self.reports.accepted(
            message=number, mail_from=envelope.mail_from or "", helo=session.host_name,
            peer_ip=server.peer_ip, rcpts=envelope.rcpt_tos, content=content,
        )
        return f"250 2.0.0 OK queued as {number}"


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Drop the connection at once (RST, no FIN handshake), as a crashed server would."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    elif transport is not None:
        transport.close()


class _Connection(SMTP):
    """One SMTP connection: aiosmtpd's protocol plus the connection-level script state."""

    def __init__(self, hooks: _Hooks, **kwargs: Any) -> None:
        self.hooks = hooks
        self.txn = _Transaction(hooks.config.max_rcpts_per_txn)
        self.peer_ip = ""
        self.peer_port = 0
        self.accepted = 0
        self.close_after: int | None = None
        self.close_reply = ""
        # Set by a gate's 421: the connection closes once that reply is written.
        self.close_after_reply = False
        self._counted = False
        super().__init__(hooks, **kwargs)
        self._smtp_methods = {n: self._guard(m) for n, m in self._smtp_methods.items()}

    def _guard(self, method: _Handler) -> _Handler:
        """Every command first checks whether a scripted 421 is due."""

        @functools.wraps(method)
        async def guarded(arg: str | None) -> None:
            if self.close_after is not None and self.accepted >= self.close_after:
                await self.push(self.close_reply)
                if self.transport is not None:
                    self.transport.close()
                return
            await method(arg)

        return guarded

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self.txn = _Transaction(self.hooks.config.max_rcpts_per_txn)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS with the TLS transport; count the TCP connection once.
        if not self._counted:
            peer = transport.get_extra_info("peername") or ("?", 0)
            self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
            self._counted = True
            self.hooks.store.connection_opened(self.peer_ip)
            self.hooks.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted and self in self.hooks.live:
            self.hooks.live.discard(self)
            self.hooks.store.connection_closed(self.peer_ip)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.hooks.refuse_connection():
            await super().push(BUSY_BANNER)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return None if ssl_object is None else str(ssl_object.version())

    async def push(self, status: str) -> None:  # type: ignore[override]
        if self.close_after_reply and (self.transport is None or self.transport.is_closing()):
            return  # closed after a gate's 421: commands already read get no reply
        if self.txn.tarpit:
            await asyncio.sleep(self.hooks.config.tarpit_seconds)
        await super().push(status)
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if not self.txn.disconnect_in_data or arg or self.envelope is None:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        # Take part of the body so the client is mid-transfer, then drop without a reply.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError,
                                 asyncio.IncompleteReadError):
            await asyncio.wait_for(self._reader.readuntil(b"\r\n"), DISCONNECT_READ_TIMEOUT)
        _abort(self.transport)


class MxEngine:
    """The listening server; runs on whichever event loop calls start()."""

    def __init__(self, config: MxConfig, *, gate: Gate | None = None) -> None:
        self.config = config
        # Settings are checked and the key read before any file is opened.
        check_relay(config.report_relay)
        reporter = load_reporter(
            domain=config.reporter_domain, address=config.reporter_address,
            selector=config.reporter_selector, key_file=config.reporter_key_file,
        )
        self.store = MxStore(config.store_dir)
        self.reports = ReportSender(
            store=self.store, hostname=config.hostname, relay=config.report_relay,
            fbl_address=config.fbl_address, reporter=reporter,
        )
        self.hooks = _Hooks(config, self.store, self.reports, gate)
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        tls_context = self.config.tls_context()

        def factory() -> _Connection:
            return _Connection(
                self.hooks,
                hostname=self.config.hostname,
                tls_context=tls_context,
                require_starttls=False,
                enable_SMTPUTF8=True,
                data_size_limit=DATA_SIZE_LIMIT,
                loop=loop,
            )

        self._server = await loop.create_server(
            factory, self.config.host, self.config.port, backlog=LISTEN_BACKLOG
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.hooks.live):
                _abort(connection.transport)
            await asyncio.sleep(0)  # let connection_lost run for the aborted ones
            await self._server.wait_closed()
        await self.reports.close()
        self.store.write_stats()
        self.store.close()
