"""One SMTP client connection as an asyncio Protocol: write commands, await their replies.

Replies are matched to commands by order, so a group of commands can be written
at once and its replies awaited together (PIPELINING, RFC 2920): one write and
one wake-up per group instead of one per command. The group is joined into one
buffer before it is written: over TLS each write is sealed as its own record(s),
so commands written one by one would each travel in a record of their own, and
receivers count that as pipelining not used.

Every wait is bounded by a timer; a reply nobody asked for (a server closing an
idle connection with 421, or one out of step) and any malformed reply break the
connection for good, because replies could no longer be paired with commands.
Before the TLS handshake the read buffer is discarded, so nothing the server
sent in the clear can be read as if it had come over TLS (RFC 3207 5).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import cast

from quiver.smtp.reader import RawReply, ReplyError, ReplyReader


class WireError(Exception):
    """The exchange failed; `replies` are those of the group that arrived before it did."""

    def __init__(self, text: str, replies: Sequence[RawReply] = ()) -> None:
        super().__init__(text)
        self.replies = list(replies)


class Disconnected(WireError):
    """The connection closed (or was never usable for this exchange)."""


class ReplyTimeout(WireError):
    """No complete set of replies within the time allowed."""


class BadReply(WireError):
    """The server sent something that is not an SMTP reply, or more replies than asked for."""


class SmtpWire(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = ReplyReader()
        self._replies: list[RawReply] = []
        # Replies the current exchange still expects. The banner is due the moment the
        # connection exists, possibly before anyone awaits it, so it is expected from
        # the start; otherwise a reply while nothing is expected is unsolicited.
        self._want = 1
        self._waiter: asyncio.Future[list[RawReply]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        # Set once, never cleared: after it, every exchange fails at once.
        self._broken: WireError | None = None
        self.transport: asyncio.Transport | None = None
        # A reply that arrived while none was expected (typically "421 idle timeout").
        self.unsolicited: RawReply | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._reader.feed(data)
        except ReplyError as exc:
            # What the server said before the garbage still counts (a 250 to the end
            # of data means the message was taken); then the connection is done.
            self._take(exc.replies)
            self._break(BadReply(str(exc)))
            return
        self._take(replies)

    def _take(self, replies: list[RawReply]) -> None:
        if not replies:
            return
        if self._want == 0:
            self._unsolicited(replies[0])
            return
        self._replies.extend(replies)
        if self._waiter is not None:
            self._settle()

    def _unsolicited(self, reply: RawReply) -> None:
        self.unsolicited = self.unsolicited or reply
        code, text = reply
        self._break(Disconnected(f"unsolicited reply: {code} {text[:200]}"))

    def _settle(self) -> None:
        if len(self._replies) < self._want:
            return
        extra = len(self._replies) - self._want
        got, self._replies = self._replies, []
        if extra:
            # More replies than commands: the server is out of step. Hand over what
            # was asked for, then refuse to go on with this connection.
            self._resolve(got[: self._want])
            self._unsolicited(got[len(got) - extra])
        else:
            self._resolve(got)

    def eof_received(self) -> bool:
        return False  # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(Disconnected("connection lost" + (f": {exc}" if exc else "")))

    # -- the client side -------------------------------------------------------

    @property
    def usable(self) -> bool:
        return (self._broken is None and self.transport is not None
                and not self.transport.is_closing())

    def exchange(
        self, data: bytes | Sequence[bytes] | None, *, replies: int, timeout: float
    ) -> asyncio.Future[list[RawReply]]:
        """Write `data` (nothing for the banner) and await `replies` replies, in order.

        The future fails with a WireError that carries the replies that did arrive.
        """
        if self._waiter is not None:
            raise RuntimeError("an exchange is already in progress on this connection")
        waiter = self._loop.create_future()
        if data is None:
            # Reading without writing is for the banner, which may have arrived already
            # (even if the server closed right after sending it).
            if replies != self._want:
                raise RuntimeError("nothing was sent that these replies could answer")
            if len(self._replies) >= self._want:
                self._waiter = waiter
                self._settle()
                return waiter
        if data is not None and self._broken is None and not self._reader.idle:
            # Part of a reply nobody asked for: the server is out of step.
            self._break(BadReply("the server sent a partial reply before this command"))
        if self._broken is not None or self.transport is None or self.transport.is_closing():
            why = self._broken or Disconnected("connection closed")
            waiter.set_exception(type(why)(str(why)))
            return waiter
        if data is not None:
            self._want = replies
        self._waiter = waiter
        self._timeout = timeout
        # A waiter cancelled (its task cancelled) leaves the replies unpaired: retire
        # the connection rather than let the next command read this one's replies.
        waiter.add_done_callback(self._waiter_done)
        self._timer = self._loop.call_later(timeout, self._timed_out)
        if data:
            # One buffer, one write: one TLS record when the group fits in one.
            self.transport.write(data if isinstance(data, bytes) else b"".join(data))
        return waiter

    async def start_tls(
        self, context: ssl.SSLContext, *, server_hostname: str, timeout: float
    ) -> str | None:
        """Upgrade after a 220 to STARTTLS; the negotiated protocol version."""
        if self._broken is not None:
            raise type(self._broken)(str(self._broken))
        if not self._reader.idle:
            # Bytes after the 220 came in the clear: a command-injection attempt
            # (or a broken server). Never carry them over the handshake.
            self._break(BadReply("data after the STARTTLS reply, before the handshake"))
            raise Disconnected("server sent data after its STARTTLS reply")
        self._reader = ReplyReader()
        assert self.transport is not None
        transport = await self._loop.start_tls(
            self.transport, self, context, server_side=False,
            server_hostname=server_hostname, ssl_handshake_timeout=timeout,
        )
        if transport is None:
            raise Disconnected("connection closed during the TLS handshake")
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    @property
    def busy(self) -> bool:
        """An exchange is waiting for replies."""
        return self._waiter is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._break(Disconnected("closed by the client"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._break(Disconnected("aborted by the client"))

    # -- internals -------------------------------------------------------------

    def _resolve(self, replies: list[RawReply]) -> None:
        waiter, self._waiter = self._waiter, None
        self._want = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_result(replies)

    def _waiter_done(self, waiter: asyncio.Future[list[RawReply]]) -> None:
        if waiter.cancelled():
            if self._waiter is waiter:
                self._waiter = None
            self._break(Disconnected("an exchange was cancelled"))

    def _timed_out(self) -> None:
        self._timer = None
        self._break(ReplyTimeout(f"no reply within {self._timeout:g} s"))

    def _break(self, error: WireError) -> None:
        first = self._broken is None
        if first:
            self._broken = error
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(type(error)(str(error), self._replies))
            self._replies = []
        if first and self.transport is not None and not self.transport.is_closing():
            # A connection whose replies can no longer be trusted is not reused:
            # abort rather than close, so nothing more is sent on it.
            self.transport.abort()
