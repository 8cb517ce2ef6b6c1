"""The SMTP submission listener: aiosmtpd's command handling, Quiver's rules.

What is Quiver's here and not aiosmtpd's:
- DATA is read by quiver.ingress.data_reader (bare CR/LF refused, never a second
  message), and `250` is said only once the queue client's SendMessage (or spill
  and SendMessage) returned; any failure to enqueue is `451 4.3.0`.
- AUTH PLAIN/LOGIN only after STARTTLS (aiosmtpd's auth_require_tls); the password
  is a tenant's key, the user name the tenant's name. A client from an allowed
  network may send without AUTH.
- The client's address is the PROXY header's (the NLB's), for allow-lists and logs,
  also after STARTTLS (aiosmtpd starts a new session then).
- SMTPUTF8 is not offered: the queue contract and the sender carry ASCII (A-label)
  addresses only, so a SMTPUTF8 transaction is refused at MAIL with 555 5.5.4.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from quiver.addresses import AddressError, normalize_address
from quiver.client import OutboundMessage, QuiverClient
from quiver.envelope import MAX_RECIPIENTS, EnvelopeError
from quiver.ingress.control_headers import ControlHeaderError, take_control_headers
from quiver.ingress.data_reader import DataReader, Outcome
from quiver.ingress.limits import TenantCounters
from quiver.ingress.proxy_read import read_proxy_header
from quiver.ingress.smtp_metrics import SmtpCounts
from quiver.ingress.tenant_gate import TenantGate, TenantLimits
from quiver.smtp.proxy_header import ProxyProtocolError
from quiver.storage.base import StorageError
from quiver.tenants.keys import key_id_of

log = logging.getLogger("quiver.ingress.smtp")

# A client has this long to send its PROXY header before the connection is dropped.
PROXY_TIMEOUT = 10.0
# RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for the next command.
IDLE_TIMEOUT = 300.0
# One DATA line may be this long before it is read in fragments; longer lines are
# kept (the queue's content rules re-encode or refuse them), only not read at once.
READ_LIMIT = 64 * 1024
# Enqueues run on threads (boto3 blocks): this many at once per listener.
ENQUEUE_THREADS = 32
LISTEN_BACKLOG = 1024
METRICS_INTERVAL = 60.0

SHUTTING_DOWN = "421 4.3.2 service shutting down; try again"
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([A-Za-z0-9._:@-]{1,128})>?[ \t]*\r\n",
                         re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class AllowedNetwork:
    """Clients from `network` may send without AUTH; as `tenant` if one is named
    (its domains and limits apply), else as the X-Quiver-Tenant they give."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    tenant: str | None = None

    @classmethod
    def parse(cls, spec: str) -> AllowedNetwork:
        """`CIDR` or `CIDR=tenant`."""
        cidr, _, tenant = spec.partition("=")
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"allowed network {spec!r}: {exc}") from None
        return cls(network, tenant.strip() or None)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "smtp.quiver.local"
    tls: ssl.SSLContext | None = None
    allowed: tuple[AllowedNetwork, ...] = ()
    # Every connection starts with a PROXY header (behind the NLB); without one, the
    # connection is dropped, so nobody reaching the port directly can claim an address.
    proxy_protocol: bool = False
    idle_timeout: float = IDLE_TIMEOUT


class SmtpListener:
    """One listening socket and everything its connections share."""

    def __init__(self, config: ListenerConfig, *, client: QuiverClient,
                 gate: TenantGate | None, clock: Callable[[], float] = time.monotonic,
                 metrics_out: TextIO | None = None) -> None:
        self.config = config
        self.client = client
        self.gate = gate
        self.counters = TenantCounters(clock=clock)
        self.counts = SmtpCounts()
        self.live: set[Submission] = set()
        self._metrics_out = metrics_out
        self._server: asyncio.Server | None = None
        self._executor = ThreadPoolExecutor(max_workers=ENQUEUE_THREADS,
                                            thread_name_prefix="smtp-enqueue")
        self._idle = asyncio.Event()
        self._metrics_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> SmtpListener:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Submission(self, loop=loop), self.config.host, self.config.port,
            backlog=LISTEN_BACKLOG)
        if self._metrics_out is not None:
            self._metrics_task = asyncio.create_task(self._metrics_loop())
        return self

    def network_for(self, ip: str) -> AllowedNetwork | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for allowed in self.config.allowed:
            if address.version == allowed.network.version and address in allowed.network:
                return allowed
        return None

    def limits(self, tenant: str) -> TenantLimits:
        return self.gate.limits(tenant) if self.gate is not None else TenantLimits()

    async def enqueue(self, message: OutboundMessage) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.client.enqueue, message)

    def joined(self, conn: Submission) -> None:
        self.live.add(conn)
        self._idle.clear()
        self.counts.connections = len(self.live)

    def left(self, conn: Submission) -> None:
        self.live.discard(conn)
        self.counts.connections = len(self.live)
        if not self.live:
            self._idle.set()

    async def stop(self, *, timeout: float) -> int:
        """Stop accepting; let open transactions finish (idle sessions get 421 now,
        busy ones after their DATA reply) for at most `timeout` seconds, then close
        what is left. Returns how many sessions were cut off."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.live):
            conn.drain()
        cut = 0
        if self.live:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                cut = len(self.live)
                for conn in list(self.live):
                    conn.close_now()
        if self._server is not None:
            await self._server.wait_closed()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            self._flush_metrics()
        self._executor.shutdown(wait=True)
        return cut

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        if self._metrics_out is not None:
            self.counts.flush(self._metrics_out, at_ms=int(time.time() * 1000))


class _Hooks:
    """aiosmtpd's handler hooks; the per-session state lives on the Submission."""

    async def handle_EHLO(self, server: Submission, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one by one whatever arrives; saying so lets clients
        # send MAIL, RCPT and DATA in one write (RFC 2920).
        responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: Submission, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        return server.mail(envelope, address, mail_options)

    async def handle_RCPT(self, server: Submission, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if rcpt_options:
            return "555 5.5.4 RCPT TO parameters are not supported"
        try:
            rcpt = normalize_address(address)
        except AddressError as exc:
            return f"553 5.1.3 invalid recipient address: {exc}"
        if any(r.lower() == rcpt.lower() for r in envelope.rcpt_tos):
            return "250 2.1.5 Ok (a recipient given twice is sent once)"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 too many recipients: at most {MAX_RECIPIENTS} per message"
        envelope.rcpt_tos.append(rcpt)
        return "250 2.1.5 Ok"


class Submission(SMTP):
    """One client connection."""

    line_length_limit = READ_LIMIT

    def __init__(self, listener: SmtpListener, *, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        config = listener.config
        super().__init__(
            _Hooks(), data_size_limit=listener.client.max_message_size,
            enable_SMTPUTF8=False, decode_data=False, hostname=config.hostname,
            ident="ESMTP Quiver", tls_context=config.tls, timeout=config.idle_timeout,
            auth_require_tls=True, authenticator=self._check_credentials, loop=loop)
        self.client_address: tuple[str, int] | None = None
        self.network: AllowedNetwork | None = None
        self.tenant: str | None = None  # from AUTH, or the allowed network's
        self._slot: str | None = None  # the tenant whose connection slot this holds
        self._draining = False
        self._in_data = False
        self._close_after_reply = False
        self._credentials: tuple[str, LoginPassword] | None = None

    # --- connection lifecycle -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.client_address is not None and self.session is not None:
            # After STARTTLS aiosmtpd starts a new session with the socket's peer
            # (the load balancer): the client is still who the PROXY header said.
            self.session.peer = self.client_address  # type: ignore[assignment]
        self.listener.joined(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._slot is not None:
            self.listener.counters.close(self._slot)
            self._slot = None
        self.listener.left(self)

    async def _handle_client(self) -> None:
        assert self.session is not None and self.transport is not None
        if self.listener.config.proxy_protocol:
            try:
                header = await asyncio.wait_for(read_proxy_header(self._reader), PROXY_TIMEOUT)
            except asyncio.IncompleteReadError as exc:
                # The load balancer's TCP health check connects and closes at once.
                level = logging.DEBUG if not exc.partial else logging.WARNING
                log.log(level, "%r: closed before a whole PROXY header", self.session.peer)
                self.transport.close()
                return
            except (ProxyProtocolError, TimeoutError) as exc:
                log.warning("%r: no valid PROXY header, dropped: %s", self.session.peer, exc)
                self.transport.close()
                return
            if header.src is not None:
                self.session.peer = header.src  # type: ignore[assignment]
        peer: Any = self.session.peer
        self.client_address = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.network = self.listener.network_for(self.client_address[0])
        if self.network is not None and self.network.tenant is not None:
            if not self._take_slot(self.network.tenant):
                await self.push(self._too_many(self.network.tenant))
                self.transport.close()
                return
            self.tenant = self.network.tenant
        await super()._handle_client()

    def drain(self) -> None:
        """Shutting down: end now if no transaction is open, else after its reply."""
        self._draining = True
        if not self._in_data and (self.envelope is None or self.envelope.mail_from is None):
            self.close_now(SHUTTING_DOWN)

    def close_now(self, reply: str | None = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if reply is not None:
                self._writer.write(reply.encode("ascii") + b"\r\n")
            self.transport.close()

    async def push(self, status: Any) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        self.listener.counts.reply(text)
        await super().push(status)

    # --- AUTH -------------------------------------------------------------------

    def _check_credentials(self, server: SMTP, session: Session, envelope: Envelope,
                           mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd asks synchronously; the key store answers asynchronously. The
        # credentials are kept here and checked by smtp_AUTH once aiosmtpd returns,
        # which then gives the reply (handled=True: aiosmtpd gives none).
        if isinstance(auth_data, LoginPassword):
            self._credentials = (mechanism, auth_data)
        return AuthResult(success=False, handled=True)

    async def smtp_AUTH(self, arg: str) -> None:
        self._credentials = None
        await super().smtp_AUTH(arg)
        if self._credentials is None:
            return  # refused or answered by aiosmtpd (no TLS, bad base64, cancelled)
        mechanism, credentials = self._credentials
        self._credentials = None
        await self.push(await self._login(mechanism, credentials))
        if self._close_after_reply:
            self.close_now()

    async def _login(self, mechanism: str, credentials: LoginPassword) -> str:
        assert self.session is not None
        gate = self.listener.gate
        user = credentials.login.decode("utf-8", "replace")
        key = credentials.password.decode("utf-8", "replace")
        tenant = None
        if gate is not None:
            try:
                tenant = await gate.verify(key)
            except StorageError as exc:
                log.warning("%r: AUTH %s: key store unavailable: %s", self.client_address,
                            mechanism, exc)
                return "454 4.7.0 temporary authentication failure; try again later"
        # The user name is the tenant's, or the key's id (as SES's SMTP user names are).
        if tenant is None or user not in (tenant, key_id_of(key)):
            self.listener.counts.auth_refused += 1
            log.info("%r: AUTH %s refused for %r", self.client_address, mechanism, user)
            return "535 5.7.8 authentication credentials invalid"
        if self._slot != tenant:
            if self._slot is not None:
                self.listener.counters.close(self._slot)
                self._slot = None
            if not self._take_slot(tenant):
                self._close_after_reply = True
                return self._too_many(tenant)
        self.tenant = tenant
        self.session.authenticated = True
        return "235 2.7.0 authentication successful"

    def _take_slot(self, tenant: str) -> bool:
        if not self.listener.counters.open(tenant, self.listener.limits(tenant).max_connections):
            return False
        self._slot = tenant
        return True

    @staticmethod
    def _too_many(tenant: str) -> str:
        return f"421 4.7.0 too many connections for tenant {tenant}; try again later"

    # --- MAIL ------------------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._draining:
            await self.push(SHUTTING_DOWN)
            self.close_now()
            return
        params = _mail_params(arg or "")
        if "SMTPUTF8" in params:
            await self.push("555 5.5.4 SMTPUTF8 is not supported: the queue carries ASCII "
                            "addresses only; send with an ASCII address (an IDN domain "
                            "as its A-label, xn--)")
            return
        size = params.get("SIZE", "")
        limit = self.listener.client.max_message_size
        if size.isdigit() and int(size) > limit:
            await self.push(f"552 5.3.4 message size {int(size):,} is over the limit of "
                            f"{limit:,} bytes")
            return
        await super().smtp_MAIL(arg)

    def mail(self, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        """The MAIL hook: who may send, from what, how fast."""
        assert self.session is not None
        if not self.session.authenticated and self.network is None:
            return "530 5.7.0 authentication required (AUTH PLAIN or LOGIN after STARTTLS)"
        try:
            sender = normalize_address(address)
        except AddressError as exc:
            return f"553 5.1.7 invalid sender address: {exc}"
        if self.tenant is not None:
            refused = self._tenant_refuses(self.tenant, sender)
            if refused is not None:
                return refused
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    def _tenant_refuses(self, tenant: str, sender: str) -> str | None:
        gate = self.listener.gate
        reason = gate.sender_refusal(tenant, sender) if gate is not None else None
        if reason is not None:
            return f"550 5.7.1 {reason}"
        rate = self.listener.limits(tenant).max_messages_per_second
        if not self.listener.counters.take(tenant, rate):
            return (f"451 4.7.0 tenant {tenant} is over its rate of {rate:g} messages a "
                    "second; try again shortly")
        return None

    # --- DATA ------------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 need RCPT first")
            return
        if arg:
            await self.push("501 5.5.4 DATA takes no argument")
            return
        self._in_data = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            reader = DataReader(max_size=self.listener.client.max_message_size)
            while True:
                try:
                    piece = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    piece = await self._reader.read(exc.consumed)
                except asyncio.IncompleteReadError:
                    # The client went away mid-DATA: nothing of it is enqueued.
                    self.close_now()
                    return
                end = reader.feed(piece)
                if end is not None:
                    break
            if end.outcome is Outcome.BARE_LINE_END:
                await self.push(f"554 5.5.2 {end.reason}")
                self.close_now()
                return
            if end.outcome is Outcome.TOO_BIG:
                reply = f"552 5.3.4 {end.reason}"
            else:
                reply = await self._enqueue(self.envelope, end.message)
            self.envelope = self._create_envelope()
            await self.push(reply)
        finally:
            self._in_data = False
        if self._draining:
            await self.push(SHUTTING_DOWN)
            self.close_now()

    async def _enqueue(self, envelope: Envelope, raw: bytes) -> str:
        try:
            fields, message = take_control_headers(raw)
        except ControlHeaderError as exc:
            return f"554 5.6.0 {exc}"
        tenant = self.tenant
        if fields.tenant is not None:
            if tenant is not None and fields.tenant != tenant:
                return (f"550 5.7.1 X-Quiver-Tenant {fields.tenant} is not this session's "
                        f"tenant {tenant}")
            if tenant is None:
                # An allowed network without a tenant of its own: the header names it.
                assert envelope.mail_from is not None
                refused = self._tenant_refuses(fields.tenant, envelope.mail_from)
                if refused is not None:
                    return refused
                tenant = fields.tenant
        gate = self.listener.gate
        if tenant is not None and gate is not None:
            # The From header too: one tenant never sends as another's domain.
            reason = gate.message_refusal(tenant, envelope_from=envelope.mail_from or "",
                                          raw=message)
            if reason is not None:
                return f"550 5.7.1 {reason}"
        message_id = _message_id(message)
        outbound = OutboundMessage(
            id=message_id, sender=envelope.mail_from or "", to=list(envelope.rcpt_tos),
            raw=message, pool=fields.pool, tenant=tenant, campaign=fields.campaign,
            meta=dict(fields.meta))
        try:
            await self.listener.enqueue(outbound)
        except EnvelopeError as exc:
            return f"554 5.6.0 message refused: {exc}"
        except Exception as exc:
            log.warning("%r: enqueue of %s failed: %s: %s", self.client_address, message_id,
                        type(exc).__name__, exc)
            return "451 4.3.0 message not queued: the queue is unavailable; try again later"
        self.listener.counts.accepted += 1
        return f"250 2.0.0 Ok: queued as {message_id}"


def _mail_params(arg: str) -> dict[str, str]:
    """MAIL FROM's parameters (after the path), upper-cased names: {"SIZE": "123"}."""
    _, bracket, rest = arg.rpartition(">")
    out: dict[str, str] = {}
    for token in (rest if bracket else "").split():
        name, _, value = token.partition("=")
        out[name.upper()] = value
    return out


def _message_id(message: bytes) -> str:
    """The caller's id: its Message-ID when that fits the queue contract's id, else a
    new one (every event carries it, so `quiver trace` finds the message by it)."""
    end = message.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(message, 0, len(message) if end < 0 else end + 2)
    if found is not None:
        return found.group(1).decode("ascii")
    return f"smtp-{uuid.uuid4().hex}"
