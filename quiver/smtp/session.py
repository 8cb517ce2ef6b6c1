"""One SMTP session with a receiving MX, direct or through an HAProxy egress node.

Safety lives here and below (`framing`, `wire`, `connect`) so no caller can skip
it: the exact IP about to be connected is checked against the destination guard
(callers skip forbidden addresses before they get here; this check is the last
line of defence, and its refusal is stage 'forbidden', never a connection's
failure); through a proxy the PROXY header is the first thing written; STARTTLS
always verifies against the MX host name when the context verifies, and a failed
handshake never falls back to plaintext on that connection (a caller whose
policy allows it opens a new, plaintext one).

A transaction is one write and one wait when the server offers PIPELINING
(RFC 2920): MAIL, every RCPT and DATA go together, then the body after the 354.
When the caller already has the connection's next message (`then=`), the
session holds it (`pipelined`) and writes its MAIL, RCPT and DATA behind this
body in the same write (RFC 2920 3.1 lets message content open a group), so a
connection carries one round trip per message instead of two. The session is
the one holder of that message: the caller sends its body with
`send_pipelined`, and any other `send` abandons it (and, if its envelope is at
the server, the connection). Without PIPELINING each command waits for its
reply, as RFC 5321 requires.

Every reply is read by its class: a reply of a class the command cannot have
(a 354 to RCPT, a 250 to DATA) is not believed, becomes a local 451 and retires
the connection, so nothing the server did not really accept is ever "delivered".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, NamedTuple, NoReturn, Protocol, TypeVar

from quiver.routing.safety import DestinationGuard
from quiver.smtp import framing
from quiver.smtp.connect import ConnectFailed, open_socket
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


Stage = Literal[
    "forbidden", "connect", "banner", "greeting", "ehlo", "tls", "transaction", "reused",
    "closed",
]


class SessionError(Exception):
    """The connection failed as a whole; `reply` is what the events carry.

    `stage` says where: 'forbidden' (the destination guard refused the address:
    nothing was connected), 'connect' (TCP or proxy), 'banner' (no greeting came),
    'greeting' (the server refused in its greeting), 'ehlo', 'tls',
    'transaction' (the connection dropped inside a transaction: its attempt),
    'reused' (a connection that had carried transactions was found closed before
    this one sent anything) or 'closed' (a new connection closed by the server
    before its first transaction: the server's failure, not the message's).
    """

    def __init__(self, stage: Stage, reply: Reply, target: Target | None = None) -> None:
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
    """Per-recipient outcome: the RCPT reply if refused there, else the DATA reply.

    `unsent` are the recipients refused here, never named to the server (an
    argument that cannot go on the wire): not tried at the destination.
    """

    replies: dict[str, Reply] = field(default_factory=dict)
    unsent: frozenset[str] = frozenset()
    # When a transaction went on the wire: the bytes of the message it carried, and
    # milliseconds from writing MAIL FROM (an RSET before it included) to its last reply.
    size: int | None = None
    elapsed_ms: int | None = None


class NextMessage(Protocol):
    """What the session reads of the message it holds as the connection's next: the
    caller's own object, handed back as it is by `pipelined`."""

    @property
    def sender(self) -> str: ...

    @property
    def recipients(self) -> Sequence[str]: ...


E = TypeVar("E", bound=NextMessage)


@dataclass(frozen=True, slots=True)
class _Ahead:
    """The next transaction's group, written behind the previous body, and its replies."""

    recipients: tuple[str, ...]  # as written: its replies pair with these
    replies: list[RawReply]
    # The connection failed after answering part of the group (`error.replies`).
    error: WireError | None = None
    eight_bit: bool = False  # its MAIL said BODY=8BITMIME
    started: float = 0.0  # the session clock when its MAIL was written


class _Next(NamedTuple):
    """The envelope of the message sent next on the connection, if pipelined."""

    sender: str
    recipients: Sequence[str]
    eight_bit: bool


class _ClosedWhileIdle(Exception):
    pass


class _ClosedBeforeFirst(Exception):
    pass


def _positive(reply: RawReply) -> bool:
    return 200 <= reply[0] < 300


def _envelope(
    sender: str, recipients: Sequence[str], eight_bit: bool = False
) -> tuple[list[bytes], list[str], dict[str, Reply]]:
    """MAIL and the RCPTs that can be sent, those recipients, and a local 553 for each
    recipient refused here (all of them if the sender's address is unsafe)."""
    try:
        commands = [framing.mail(sender, eight_bit=eight_bit)]
    except framing.UnsafeArgument as exc:
        refused = local_reply(553, "5.1.7", f"not sent: {exc}")
        return [], [], {r: refused for r in recipients}
    safe: list[str] = []
    refusals: dict[str, Reply] = {}
    for rcpt in recipients:
        try:
            commands.append(framing.rcpt(rcpt))
            safe.append(rcpt)
        except framing.UnsafeArgument as exc:
            refusals[rcpt] = local_reply(553, "5.1.3", f"not sent: {exc}")
    return commands, safe, refusals


def _out_of_sequence(replies: Sequence[RawReply]) -> bool:
    """503 to MAIL, or to an RCPT after an accepted MAIL. (After a refused MAIL a 503
    to RCPT is its consequence, and so is a 503 to DATA after every RCPT failed; the
    group ends with DATA, so the last reply is DATA's when all arrived.)"""
    if not replies:
        return False
    first = replies[0][0]
    if first == 503:
        return True
    rcpts = replies[1:-1] if len(replies) > 2 else replies[1:]
    return 200 <= first < 300 and any(r[0] == 503 for r in rcpts)


def _reply(raw: RawReply) -> Reply:
    return parse_reply(raw[0], raw[1])


class SmtpSession(Generic[E]):
    """One connection's SMTP; `E` is the caller's message, held between the `send`
    that pipelined its envelope and the `send_pipelined` that sends its body."""

    def __init__(
        self, wire: SmtpWire, *, target: Target, ehlo: str, command_timeout: float
    ) -> None:
        self._wire = wire
        self._ehlo_name = ehlo
        self._timeout = command_timeout
        self.target = target
        self.tls_version: str | None = None
        # Why STARTTLS was not used although offered (the server refused it), when the
        # caller allowed carrying on in plaintext.
        self.tls_refused: str | None = None
        self.extensions: frozenset[str] = frozenset()
        self.messages_sent = 0
        # Transactions started on this connection (their first group written).
        self.transactions = 0
        # A transaction was opened (MAIL accepted) and not completed: the next one
        # starts with RSET.
        self._needs_rset = False
        # A reply of a class its command cannot have was seen: the connection is retired
        # and nothing more is sent on it.
        self._unbelieved = False
        # The caller's next message on this connection (`then=` of the last send), and,
        # when its commands went out behind the last body, what they were and their
        # replies. The one record of it: the caller asks `pipelined`.
        self._next: E | None = None
        self._ahead: _Ahead | None = None
        # Why the server is taken not to handle commands behind the end of data (no
        # reply to them, or "bad sequence" replies); the caller stops sending them.
        self.pipeline_next_failed: str | None = None
        # Times transactions (TransactionResult.elapsed_ms); a test may set its own.
        self.clock: Callable[[], float] = time.monotonic

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
        require_tls: bool = False,
    ) -> SmtpSession[E]:
        """A greeted session. With `tls_context`, STARTTLS is used when offered; with
        `require_tls` too, a server that does not offer it or refuses it fails the
        connection (stage 'tls') instead of carrying mail in plaintext."""
        if (why := guard.reason(target.ip)) is not None:
            raise SessionError(
                "forbidden", local_reply(550, "5.4.4", f"refusing to connect to {why}"), target)
        try:
            sock = await open_socket(
                ip=target.ip, port=target.port, local_ip=egress.local_ip,
                frontend=egress.frontend, proxy_version=egress.proxy_version,
                timeout=connect_timeout)
        except ConnectFailed as exc:
            raise SessionError("connect", exc.reply) from None
        loop = asyncio.get_running_loop()
        wire = SmtpWire(loop)
        try:
            await loop.create_connection(lambda: wire, sock=sock)
        except OSError as exc:
            sock.close()
            raise SessionError(
                "connect", local_reply(421, "4.4.1", f"connect to {target.ip}: {exc}")
            ) from None
        session: SmtpSession[E] = cls(
            wire, target=target, ehlo=egress.ehlo, command_timeout=command_timeout)
        try:
            await session._greet(tls_context, connect_timeout, require_tls=require_tls)
            if not wire.usable:
                # Greeted, then closed (a 421 right behind the EHLO reply): a connection
                # failure, so the site backs off instead of reconnecting at once.
                raise SessionError("ehlo", session._closed_reply("closed right after EHLO"))
        except BaseException:
            wire.abort()
            raise
        return session

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def eight_bit_mime(self) -> bool:
        """The server takes 8-bit message content declared with BODY=8BITMIME (RFC 6152)."""
        return "8BITMIME" in self.extensions

    @property
    def is_open(self) -> bool:
        return self._wire.usable

    @property
    def pipelined(self) -> E | None:
        """The message handed over as `then` with the last send, to be sent next on this
        connection with `send_pipelined` (its envelope may be at the server already)."""
        return self._next

    async def _greet(self, tls_context: ssl.SSLContext | None, connect_timeout: float, *,
                     require_tls: bool) -> None:
        try:
            (banner,) = await self._wire.exchange(None, replies=1, timeout=connect_timeout)
        except WireError as exc:
            raise SessionError("banner", local_reply(
                421, "4.4.2", f"no banner from {self.target.mx_name}: {exc}")) from None
        if banner[0] != 220:
            # The destination itself answered (unlike 'banner': nothing came).
            raise SessionError("greeting", self._refusal(banner, "the greeting"))
        await self._hello()
        if tls_context is None:
            return
        if "STARTTLS" not in self.extensions:
            if require_tls:
                raise SessionError("tls", local_reply(
                    421, "4.7.4", f"{self.target.mx_name} does not offer STARTTLS; "
                    "the TLS policy for this destination requires it"))
            return
        try:
            (answer,) = await self._wire.exchange(_STARTTLS, replies=1, timeout=self._timeout)
            if answer[0] != 220:
                refused = local_reply(
                    421, "4.7.5", f"STARTTLS with {self.target.mx_name}: refused: "
                    f"{answer[0]} {answer[1]}")
                if require_tls or not 400 <= answer[0] < 600 or not self._wire.usable:
                    raise SessionError("tls", refused)
                # Opportunistic: the session is still in plaintext and in step (the
                # server answered with a refusal), so the mail goes on without TLS.
                self.tls_refused = refused.text
                return
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
            raise SessionError("ehlo", self._refusal(reply, "EHLO"))
        lines = reply[1].split("\n")[1:]
        self.extensions = frozenset(line.split(" ", 1)[0].upper() for line in lines if line)

    async def send(
        self, *, sender: str, recipients: Sequence[str], message: bytes,
        eight_bit: bool = False, then: E | None = None, then_eight_bit: bool = False,
    ) -> TransactionResult:
        """One transaction; SessionError('transaction') if the connection is lost in it,
        'reused' or 'closed' if it was found closed before anything was sent.

        `then` is the message the caller sends next on this connection: the session
        holds it (`pipelined`) once this send returns, and may write its commands
        behind this body. A message held from the last send is abandoned here: if its
        envelope is at the server, the connection is too (SessionError 'reused').

        `eight_bit` declares BODY=8BITMIME for `message` (the server must offer it);
        `then_eight_bit` does for the next message. Without it `message` must be 7-bit.
        """
        ahead, self._next, self._ahead = self._ahead, None, None
        if (problem := self._unsendable(message, eight_bit)) is not None:
            result = self._refused(recipients, problem, ahead)
        elif ahead is not None:
            self._abandoned()
        else:
            result = await self._transact(
                sender, recipients, message, eight_bit, None, then, then_eight_bit)
        self._next = then
        return result

    async def send_pipelined(
        self, *, message: bytes, eight_bit: bool = False, then: E | None = None,
        then_eight_bit: bool = False,
    ) -> TransactionResult:
        """The body of the message held as `pipelined` (its envelope as written behind
        the last body, or written now if it was not); otherwise as `send`."""
        held, ahead, self._next, self._ahead = self._next, self._ahead, None, None
        if held is None:
            raise RuntimeError("send_pipelined without a pipelined message")
        recipients = held.recipients if ahead is None else ahead.recipients
        if (problem := self._unsendable(message, eight_bit)) is not None:
            result = self._refused(recipients, problem, ahead)
        elif ahead is not None and ahead.eight_bit != eight_bit:
            self._abandoned()  # its MAIL declared another kind of body
        else:
            result = await self._transact(
                held.sender, recipients, message, eight_bit, ahead, then, then_eight_bit)
        self._next = then
        return result

    def _refused(self, recipients: Sequence[str], problem: str,
                 ahead: _Ahead | None) -> TransactionResult:
        """`problem` is why the message must not follow DATA: refused here, unsent."""
        if ahead is not None:
            self._wire.abort()  # its envelope awaits a body that will not come
        refused = local_reply(554, "5.6.0", f"not sent: {problem}")
        return TransactionResult({r: refused for r in recipients})

    def _abandoned(self) -> NoReturn:
        # The server holds another envelope (maybe awaiting its body): unusable.
        self._wire.abort()
        raise SessionError("reused", local_reply(
            451, "4.3.0", "not sent: the connection's pipelined transaction was abandoned"))

    async def _transact(
        self, sender: str, recipients: Sequence[str], message: bytes, eight_bit: bool,
        ahead: _Ahead | None, then: E | None, then_eight_bit: bool,
    ) -> TransactionResult:
        """A sendable transaction; `ahead` its group, if written behind the last body."""
        if ahead is not None and _out_of_sequence(
                ahead.error.replies if ahead.error else ahead.replies):
            # "Bad sequence" to commands that were in sequence: the server lost what
            # followed the end of data. Its 5xx would bounce mail it never judged.
            self.pipeline_next_failed = "503 to commands pipelined behind the end of data"
            self._wire.abort()
            raise SessionError("reused", local_reply(
                451, "4.5.0", "not sent: the server mishandled pipelined commands"))
        if not self._wire.usable and (ahead is None or ahead.error is None):
            # Closed while idle (the server's timeout, or its proxy died): nothing of
            # this message was sent, so it is not its attempt.
            if self.transactions:
                raise SessionError("reused", self._closed_reply("connection closed while idle"))
            raise SessionError("closed", self._closed_reply("closed before the first MAIL"))
        commands: list[bytes] = []
        if ahead is not None:
            # Framed (every argument safe) and written behind the last body already.
            safe, result = list(recipients), TransactionResult()
        else:
            commands, safe, refusals = _envelope(sender, recipients, eight_bit)
            result = TransactionResult(refusals, frozenset(refusals))
        if not safe:
            return result
        started = ahead.started if ahead is not None else self.clock()
        try:
            if self.pipelining:
                sent = await self._pipelined(
                    commands, safe, message, ahead,
                    None if then is None else _Next(then.sender, then.recipients,
                                                    then_eight_bit))
            else:
                sent = await self._lockstep(commands, safe, message)
        except _ClosedWhileIdle:
            self._wire.abort()
            raise SessionError(
                "reused", self._closed_reply("connection closed while idle")) from None
        except _ClosedBeforeFirst:
            self._wire.abort()
            raise SessionError(
                "closed", self._closed_reply("closed before answering MAIL")) from None
        except WireError as exc:
            self._wire.abort()
            kind = "timed out" if isinstance(exc, ReplyTimeout) else "connection lost"
            raise SessionError(
                "transaction", local_reply(451, "4.4.2", f"{kind}: {exc}")) from None
        if any(r.code == 421 for r in sent.replies.values()):
            # The server is closing (and may still be reading DATA): nothing more here.
            self._wire.abort()
        result.replies.update(sent.replies)
        result.size = len(message)
        result.elapsed_ms = max(0, round((self.clock() - started) * 1000))
        return result

    async def _first(self, data: bytes | list[bytes], replies: int) -> list[RawReply]:
        """The transaction's first exchange. A close before any reply to it delivered
        nothing (no body is sent before a 354): on a connection that carried
        transactions before, the server dropped it while idle; on a new one, the
        server closed it before taking any mail. Neither is this message's attempt."""
        earlier = self.transactions
        self.transactions += 1
        try:
            return await self._wire.exchange(data, replies=replies, timeout=self._timeout)
        except Disconnected as exc:
            if not exc.replies:
                raise (_ClosedWhileIdle if earlier else _ClosedBeforeFirst) from None
            raise

    async def _pipelined(
        self, commands: list[bytes], recipients: Sequence[str], message: bytes,
        ahead: _Ahead | None, then: _Next | None,
    ) -> TransactionResult:
        rset = self._needs_rset and ahead is None
        group = [_RSET, *commands, _DATA] if rset else [*commands, _DATA]
        try:
            if ahead is None:
                replies = await self._first(group, len(group))
            elif ahead.error is not None:
                raise ahead.error  # read as if it failed now: same outcome
            else:
                replies = ahead.replies  # written behind the previous body, answered
        except WireError as exc:
            # The server answered part of the group, then closed: what it said before
            # closing is what the recipients got.
            got = exc.replies
            if rset and got and got[0][0] != 421:
                got = got[1:]  # past RSET's reply, to MAIL's
            if got and not _positive(got[0]):
                return self._all(recipients, self._refusal(got[0], "MAIL"))
            closing = next((r for r in got[1:] if r[0] == 421), None)
            if closing is None:
                raise
            return self._closing(recipients, got[1:], closing)
        if rset:
            if replies[0][0] == 421:
                return self._all(recipients, _reply(replies[0]))
            replies = replies[1:]
        self._needs_rset = False
        mail, data = replies[0], replies[-1]
        if not _positive(mail):
            # No transaction was opened: RCPT and DATA failed as "bad sequence".
            refused = self._refusal(mail, "MAIL")
            if data[0] == 354 and not self._unbelieved:
                await self._empty_data()
            return self._all(recipients, refused)
        closing = next((r for r in replies[1:-1] if r[0] == 421), None)
        if closing is not None:
            return self._closing(recipients, replies[1:-1], closing)
        result, accepted = self._rcpt_results(recipients, replies[1:-1])
        if self._unbelieved:
            return self._out_of_step(result, accepted)
        if accepted and data[0] == 354:
            return await self._finish(result, accepted, message, then)
        if data[0] == 354:
            # RFC 2920 3.1: DATA accepted although every RCPT failed: end it empty.
            await self._empty_data()
        else:
            self._needs_rset = True
            refused = self._refusal(data, "DATA")
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
                return self._all(recipients, _reply(reply))
            self._needs_rset = False
            (mail,) = await wire.exchange(commands[0], replies=1, timeout=timeout)
        else:
            (mail,) = await self._first(commands[0], 1)
        if not _positive(mail):
            return self._all(recipients, self._refusal(mail, "MAIL"))
        self._needs_rset = True
        rcpt_replies: list[RawReply] = []
        for command in commands[1:]:
            (reply,) = await wire.exchange(command, replies=1, timeout=timeout)
            if reply[0] == 421:
                return self._closing(recipients, rcpt_replies, reply)
            rcpt_replies.append(reply)
            if not 200 <= reply[0] < 300 and not 400 <= reply[0] < 600:
                break  # out of step: _rcpt_results retires the connection
        result, accepted = self._rcpt_results(recipients, rcpt_replies)
        if self._unbelieved:
            unasked = recipients[len(rcpt_replies):]
            return self._out_of_step(result, [*accepted, *unasked])
        if not accepted:
            return result
        (data,) = await wire.exchange(_DATA, replies=1, timeout=timeout)
        if data[0] != 354:
            refused = self._refusal(data, "DATA")
            for rcpt in accepted:
                result.replies[rcpt] = refused
            return result
        return await self._finish(result, accepted, message)

    async def _finish(
        self, result: TransactionResult, accepted: list[str], message: bytes,
        then: _Next | None = None,
    ) -> TransactionResult:
        group = self._next_group(then)
        written = self.clock()
        if group is None:
            (final,) = await self._wire.exchange(
                framing.data_payload(message), replies=1, timeout=self._timeout)
        else:
            assert then is not None
            self.transactions += 1
            try:
                got = await self._wire.exchange(
                    framing.data_payload(message, then=b"".join(group)),
                    replies=1 + len(group), timeout=self._timeout)
            except WireError as exc:
                if not exc.replies:
                    raise  # no reply to this end of data: the attempt is this message's
                # This message was answered. The next one's send reads what the server
                # said to its group before the connection failed (a 421 to its MAIL
                # backs the site off); with nothing said it finds the connection
                # closed and is queued again.
                got, rest = exc.replies[:1], exc.replies[1:]
                if not rest and isinstance(exc, ReplyTimeout):
                    self.pipeline_next_failed = (
                        f"no reply to commands pipelined behind the end of data: {exc}")
                if rest:
                    self._ahead = _Ahead(tuple(then.recipients), [],
                                         type(exc)(str(exc), rest), then.eight_bit, written)
            else:
                self._ahead = _Ahead(tuple(then.recipients), got[1:], None, then.eight_bit,
                                     written)
            final = got[0]
        # After the reply to the end of data the server has reset the transaction,
        # whatever the reply said.
        self._needs_rset = False
        self.messages_sent += 1
        reply = _reply(final) if _positive(final) else self._refusal(final, "the message")
        if self._unbelieved or final[0] == 421:
            self._ahead = None  # replies no longer pair with commands, or it is closing
        for rcpt in accepted:
            result.replies[rcpt] = reply
        return result

    @staticmethod
    def _next_group(then: _Next | None) -> list[bytes] | None:
        """MAIL, RCPTs and DATA for the next message, or None if it is not pipelined
        behind this body (nothing next, or an argument its own send will refuse)."""
        if then is None:
            return None
        commands, safe, refusals = _envelope(*then)
        return None if refusals or not safe else [*commands, _DATA]

    def _unsendable(self, message: bytes, eight_bit: bool) -> str | None:
        """Why `message` must not follow DATA on this connection, if it must not."""
        if eight_bit and not self.eight_bit_mime:
            return f"8-bit message, and {self.target.mx_name} does not offer 8BITMIME"
        return framing.payload_problem(message, eight_bit=eight_bit)

    async def _empty_data(self) -> None:
        await self._wire.exchange(framing.END_OF_DATA, replies=1, timeout=self._timeout)

    def _refusal(self, raw: RawReply, what: str) -> Reply:
        """A 4xx or 5xx reply as it is; any other where no acceptance was possible is
        not believed: a local 451, and the connection is retired."""
        if 400 <= raw[0] < 600:
            return _reply(raw)
        self._unbelieved = True
        self._wire.abort()
        return local_reply(451, "4.5.0", f"unexpected reply to {what}: {raw[0]} {raw[1][:200]}")

    def _rcpt_results(
        self, recipients: Sequence[str], replies: Sequence[RawReply]
    ) -> tuple[TransactionResult, list[str]]:
        result = TransactionResult()
        accepted = []
        for rcpt, reply in zip(recipients, replies, strict=False):
            if _positive(reply):
                accepted.append(rcpt)
            else:
                # A recipient refused at RCPT does not stop the others.
                result.replies[rcpt] = self._refusal(reply, "RCPT")
        return result, accepted

    @staticmethod
    def _out_of_step(result: TransactionResult, pending: Sequence[str]) -> TransactionResult:
        """A reply of the wrong class retired the connection mid-transaction: the
        recipients it had not refused are deferred, not sent on a connection whose
        replies can no longer be paired with its commands."""
        reply = local_reply(451, "4.5.0", "not sent: the server's replies were out of step")
        for rcpt in pending:
            result.replies[rcpt] = reply
        return result

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
            if 400 <= raw[0] < 600 and raw[0] != 421:
                result.replies[rcpt] = _reply(raw)
        return result

    @staticmethod
    def _all(recipients: Sequence[str], reply: Reply) -> TransactionResult:
        return TransactionResult({r: reply for r in recipients})

    def _closed_reply(self, text: str) -> Reply:
        said = self._wire.unsolicited
        if said is not None:
            text += f" ({said[0]} {said[1][:200]})"
        return local_reply(421, "4.4.2", text)

    async def close(self) -> None:
        wire, ahead = self._wire, self._ahead
        self._next = self._ahead = None  # a closed session holds no next message
        if wire.busy or ahead is not None:
            # Replies still owed, or the server may be awaiting a pipelined body (a
            # QUIT would be read as message text): abort; nothing unfinished is kept.
            wire.abort()
        elif wire.usable:
            with contextlib.suppress(WireError):
                await wire.exchange(_QUIT, replies=1, timeout=QUIT_TIMEOUT)
        wire.close()
