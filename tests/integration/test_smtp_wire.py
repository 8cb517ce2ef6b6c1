"""The SMTP client against scripted servers on loopback that send the raw bytes a
misbehaving receiver would: pipelined and byte-by-byte replies, unsolicited 421s, garbage,
silence, extra replies, data injected after STARTTLS's 220, a close mid-body.

Each server script is a coroutine over (reader, writer) for one connection."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest

from quiver.delivery import Attempt
from quiver.policy import Policy, parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.safety import DestinationGuard
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

pytestmark = pytest.mark.integration

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
EHLO_PIPELINING = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"


class Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[bytes] = []  # every line the server read, in order
        self.errors: list[BaseException] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(self.script(reader, writer), 10)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except BaseException as exc:  # reported by the test, not lost in a callback
                self.errors.append(exc)
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        assert not self.errors, self.errors

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readline()
        self.seen.append(line)
        return line

    async def greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    ehlo: bytes = EHLO_PIPELINING) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        assert (await self.line(reader)).startswith(b"EHLO ")
        writer.write(ehlo)
        await writer.drain()

    async def group(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    replies: bytes) -> None:
        """A pipelined one-recipient group read (MAIL, RCPT, DATA), `replies` written."""
        for _ in range(3):
            await self.line(reader)
        writer.write(replies)
        await writer.drain()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                     final: bytes = b"250 queued\r\n") -> None:
        """One pipelined one-recipient transaction: MAIL, RCPT, DATA; the body; `final`."""
        await self.group(reader, writer, b"250 ok\r\n250 ok\r\n354 go\r\n")
        await self.body(reader)
        writer.write(final)
        await writer.drain()

    async def body(self, reader: asyncio.StreamReader) -> bytes:
        data = await reader.readuntil(b"\r\n.\r\n")
        self.seen.append(data)
        return data


async def until(condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Wait for what the event loop will make true; the deadline only catches a hang."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def open_session(server: Scripted, *, timeout: float = 5.0,
                       tls: ssl.SSLContext | None = None) -> SmtpSession:
    return await SmtpSession.open(
        target=Target(mx_name="mx.test", ip="127.0.0.1", port=server.port),
        egress=Egress(ehlo="o1.quiver.test"), guard=DestinationGuard(["127.0.0.0/8"]),
        tls_context=tls, connect_timeout=5, command_timeout=timeout)


def scripted_scheduler(server: Scripted, extra: str = "", *, delivery: str = "") -> Scheduler:
    """A scheduler with one source whose only route, for d.test, is `server`."""
    policy = scripted_policy(server, extra, delivery=delivery)
    return Scheduler(policy=policy, picker=SourcePicker(policy),
                     resolver=MxResolver(routes=dict(policy.delivery.routes)))


async def deliver_each(scheduler: Scheduler, recipients: list[str], *,
                       timeout: float) -> list[list[Attempt]]:
    """One message per recipient at d.test, all at once; each one's attempts, in order."""
    return list(await asyncio.wait_for(asyncio.gather(*(
        scheduler.deliver(pool="p", domain="d.test", sender="a@news.test",
                          recipients=[rcpt], message=MESSAGE)
        for rcpt in recipients)), timeout))


def scripted_policy(server: Scripted, extra: str = "", *, delivery: str = "") -> Policy:
    return parse_policy(scripted_policy_text(server.port, extra, delivery=delivery))


def scripted_policy_text(port: int, extra: str = "", *, delivery: str = "") -> str:
    return f"""
local_only = true
default_pool = "p"
[delivery]
{delivery}
port = {port}
verify_tls = false
allow_networks = ["127.0.0.0/8"]
routes = {{ "d.test" = "127.0.0.1" }}
[sources.a]
ip = "127.0.0.2"
local_ip = "127.0.0.2"
ehlo = "a.quiver.test"
[pools.p]
sources = ["a"]
{extra}
"""


async def send(session: SmtpSession, *rcpts: str) -> dict[str, tuple[int, str]]:
    result = await session.send(sender="a@news.test", recipients=list(rcpts or ["u@d.test"]),
                                message=MESSAGE)
    return {r: (reply.code, reply.text) for r, reply in result.replies.items()}


async def test_pipelined_commands_arrive_together_and_replies_can_come_in_one_write() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        # All three lines are readable before any reply was sent: the client pipelined.
        lines = [await asyncio.wait_for(server.line(reader), 2) for _ in range(4)]
        assert [line.split(b":")[0] for line in lines] == [
            b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]
        writer.write(b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n")
        await server.body(reader)
        writer.write(b"250 2.0.0 queued\r\n")
        assert await server.line(reader) == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert session.pipelining
        replies = await send(session, "gone@d.test", "u@d.test")
        await session.close()
    assert replies == {"gone@d.test": (550, "no such user"), "u@d.test": (250, "queued")}


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer, ehlo=EHLO_PLAIN)
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await server.line(reader)
            # Nothing more may arrive until this command is answered.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.2)
            writer.write(reply)
        await server.body(reader)
        writer.write(b"250 queued\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert not session.pipelining
        assert await send(session) == {"u@d.test": (250, "queued")}


async def test_replies_sent_one_byte_at_a_time() -> None:
    async def script(reader, writer):
        async def slowly(data: bytes) -> None:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
        await slowly(b"220 mx.test ESMTP\r\n")
        await server.line(reader)
        await slowly(EHLO_PIPELINING)
        for _ in range(3):
            await server.line(reader)
        await slowly(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await server.body(reader)
        await slowly(b"250-queued\r\n250 as 7\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        # Multi-line text reaches events on one line (reply.py keeps control characters out).
        assert await send(session) == {"u@d.test": (250, "queued as 7")}


async def test_an_unsolicited_421_while_idle_makes_the_next_send_a_reuse_not_an_attempt() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.accept(reader, writer)
        await asyncio.sleep(0.1)
        writer.write(b"421 4.4.2 mx.test idle timeout\r\n")
        await writer.drain()

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session))["u@d.test"][0] == 250
        await until(lambda: not session.is_open)  # the 421 (and the close) arrived
        with pytest.raises(SessionError) as info:
            await send(session)
    assert info.value.stage == "reused"
    assert "421" in info.value.reply.text and "idle timeout" in info.value.reply.text


async def test_a_421_to_mail_followed_by_a_close_reaches_every_recipient() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.line(reader)
        writer.write(b"421 4.7.0 too busy, closing\r\n")
        await writer.drain()

    async with Scripted(script) as server:
        session = await open_session(server)
        replies = await send(session, "a@d.test", "b@d.test")
    assert replies == {"a@d.test": (421, "too busy, closing"),
                       "b@d.test": (421, "too busy, closing")}


async def test_garbage_instead_of_a_reply_fails_the_transaction_cleanly() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.line(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with Scripted(script) as server:
        session = await open_session(server)
        with pytest.raises(SessionError) as info:
            await send(session)
        assert not session.is_open
    assert info.value.stage == "transaction" and info.value.reply.code == 451
    assert "not an SMTP reply" in info.value.reply.text


async def test_silence_times_out_within_the_command_timeout() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.line(reader)
        await asyncio.sleep(3)

    async with Scripted(script) as server:
        session = await open_session(server, timeout=0.3)
        with pytest.raises(SessionError) as info:
            await send(session)
    assert info.value.stage == "transaction" and "timed out" in info.value.reply.text


async def test_more_replies_than_commands_retires_the_connection() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.accept(reader, writer, final=b"250 queued\r\n250 and again\r\n")
        # The server keeps the connection open: only the client can close it.
        assert await reader.read() == b""

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session))["u@d.test"] == (250, "queued")
        await until(lambda: not session.is_open)


async def test_data_injected_after_the_starttls_reply_is_never_read_as_tls() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer,
                           ehlo=b"250-mx.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
        assert await server.line(reader) == b"STARTTLS\r\n"
        # The classic STARTTLS injection: a reply smuggled in the same segment as the 220.
        writer.write(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with Scripted(script) as server:
        with pytest.raises(SessionError) as info:
            await open_session(server, tls=ssl.create_default_context())
    assert info.value.stage == "tls" and info.value.reply.code == 421


async def test_after_a_refused_data_the_next_transaction_starts_with_rset() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, b"250 ok\r\n250 ok\r\n554 5.3.4 not now\r\n")
        group = [await server.line(reader) for _ in range(4)]
        assert group[0] == b"RSET\r\n" and group[1].startswith(b"MAIL FROM")
        writer.write(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        await server.body(reader)
        writer.write(b"250 queued\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session))["u@d.test"] == (554, "not now")
        assert (await send(session))["u@d.test"] == (250, "queued")


async def test_a_close_in_the_middle_of_the_body_is_this_transactions_failure() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, b"250 ok\r\n250 ok\r\n354 go\r\n")
        await reader.read(5)
        writer.transport.abort()

    async with Scripted(script) as server:
        session = await open_session(server)
        with pytest.raises(SessionError) as info:
            await send(session)
    assert info.value.stage == "transaction" and info.value.reply.code == 451


async def test_ehlo_refused_falls_back_to_helo_without_extensions() -> None:
    async def script(reader, writer):
        writer.write(b"220 old.test\r\n")
        assert (await server.line(reader)).startswith(b"EHLO")
        writer.write(b"502 command not implemented\r\n")
        assert (await server.line(reader)).startswith(b"HELO o1.quiver.test")
        writer.write(b"250 old.test\r\n")
        await server.line(reader)
        writer.write(b"250 ok\r\n")
        await server.line(reader)
        writer.write(b"250 ok\r\n")
        await server.line(reader)
        writer.write(b"354 go\r\n")
        await server.body(reader)
        writer.write(b"250 queued\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert session.extensions == frozenset()
        assert (await send(session))["u@d.test"] == (250, "queued")


async def test_a_refusing_banner_is_reported_at_the_banner_stage() -> None:
    async def script(reader, writer):
        writer.write(b"554 5.7.1 no mail from you\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)

    async with Scripted(script) as server:
        with pytest.raises(SessionError) as info:
            await open_session(server)
    assert info.value.stage == "greeting" and info.value.reply.code == 554
    assert info.value.reply.text == "no mail from you"


@pytest.mark.parametrize("ehlo", [EHLO_PIPELINING, EHLO_PLAIN], ids=["pipelined", "lockstep"])
async def test_a_421_among_the_rcpts_defers_the_rest_and_keeps_earlier_refusals(
        ehlo: bytes) -> None:
    async def script(reader, writer):
        await server.greet(reader, writer, ehlo=ehlo)
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"550 5.1.1 no such user\r\n"):
            await server.line(reader)
            writer.write(reply)
            await writer.drain()
        await server.line(reader)
        writer.write(b"421 4.3.2 shutting down\r\n")
        await writer.drain()
        writer.transport.abort()

    async with Scripted(script) as server:
        session = await open_session(server)
        replies = await send(session, "a@d.test", "gone@d.test", "b@d.test", "c@d.test")
    assert replies == {"a@d.test": (421, "shutting down"), "gone@d.test": (550, "no such user"),
                       "b@d.test": (421, "shutting down"), "c@d.test": (421, "shutting down")}


async def test_a_421_right_behind_the_ehlo_reply_fails_the_connection_not_a_message() -> None:
    async def script(reader, writer):
        writer.write(b"220 mx.test ESMTP\r\n")
        await server.line(reader)
        writer.write(b"250-mx.test\r\n250 PIPELINING\r\n421 4.7.0 too busy\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)

    async with Scripted(script) as server:
        with pytest.raises(SessionError) as info:
            await open_session(server)
    assert info.value.stage == "ehlo" and info.value.reply.code == 421
    assert "too busy" in info.value.reply.text


async def test_a_close_before_the_first_transaction_is_the_servers_failure() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        writer.transport.abort()

    async with Scripted(script) as server:
        session = await open_session(server)
        await until(lambda: not session.is_open)  # the server's close arrived
        with pytest.raises(SessionError) as info:
            await send(session)
    # Not 'reused' (nothing was ever sent here) and not 'transaction' (not its attempt).
    assert info.value.stage == "closed" and info.value.reply.code == 421


async def test_an_idle_close_after_a_refused_transaction_is_still_not_an_attempt() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, b"250 ok\r\n550 5.1.1 no such user\r\n"
                                           b"554 5.5.1 no valid recipients\r\n")
        await server.line(reader)  # the next group arrives; the server has timed out
        writer.transport.abort()

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session))["u@d.test"][0] == 550
        with pytest.raises(SessionError) as info:
            await send(session)
    assert info.value.stage == "reused"


async def test_a_reply_followed_by_garbage_in_the_same_read_still_counts() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        # A stray empty line right behind the 250: the message was taken all the same.
        await server.accept(reader, writer, final=b"250 2.0.0 queued as ABC\r\n\r\n")
        # The server keeps the connection open: only the client can close it.
        assert await reader.read() == b""

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session))["u@d.test"] == (250, "queued as ABC")
        await until(lambda: not session.is_open)  # but the connection is not trusted again


@pytest.mark.parametrize(("replies", "what"), [
    (b"354 go\r\n250 ok\r\n354 go\r\n", "MAIL"),
    (b"250 ok\r\n354 go\r\n354 go\r\n", "RCPT"),
    (b"250 ok\r\n250 ok\r\n250 ok\r\n", "DATA"),
    (b"250 ok\r\n250 ok\r\n354 go\r\n", "the message"),
])
async def test_a_reply_of_the_wrong_class_is_never_taken_for_a_delivery(
        replies: bytes, what: str) -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        for _ in range(3):
            await server.line(reader)
        writer.write(replies)
        await writer.drain()
        if what == "the message":
            await server.body(reader)
            writer.write(b"354 more please\r\n")
            await writer.drain()
        await asyncio.sleep(0.3)

    async with Scripted(script) as server:
        session = await open_session(server)
        code, text = (await send(session))["u@d.test"]
        assert not session.is_open
    assert code == 451 and text.startswith(f"unexpected reply to {what}")


async def test_a_send_cancelled_mid_exchange_retires_the_connection() -> None:
    mail_read = asyncio.Event()

    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.line(reader)
        mail_read.set()
        await reader.read()  # never answers

    async with Scripted(script) as server:
        session = await open_session(server)
        task = asyncio.create_task(send(session))
        await asyncio.wait_for(mail_read.wait(), 30)  # the exchange is under way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not session.is_open
        await session.close()  # no QUIT into an unfinished exchange, no error


@pytest.mark.parametrize("close", ["421 with the EHLO reply", "close after EHLO"])
async def test_a_server_that_closes_after_ehlo_gets_a_backoff_not_a_reconnect_storm(
        close: str) -> None:
    """Through the scheduler: the job is deferred (its connection failed: its attempt), and
    the (source, site) backs off after a few connections instead of reconnecting forever;
    the next job, deferred by the backoff, was not tried."""
    connections = 0

    async def script(reader, writer):
        nonlocal connections
        connections += 1
        writer.write(b"220 mx.test ESMTP\r\n")
        await server.line(reader)
        if close.startswith("421"):
            writer.write(b"250-mx.test\r\n250 PIPELINING\r\n421 4.7.0 too busy\r\n")
        else:
            writer.write(EHLO_PIPELINING)
        await writer.drain()
        writer.transport.abort()

    async with Scripted(script) as server:
        scheduler = scripted_scheduler(server, '[retry]\nsite_backoff = "30s"')
        try:
            attempts = await asyncio.wait_for(scheduler.deliver(
                pool="p", domain="d.test", sender="a@news.test", recipients=["u@d.test"],
                message=MESSAGE), 10)
            again = await scheduler.deliver(
                pool="p", domain="d.test", sender="a@news.test", recipients=["v@d.test"],
                message=MESSAGE)
        finally:
            await scheduler.close()
    (attempt,) = attempts
    assert attempt.reply.code in (421, 451) and attempt.counts
    assert connections <= 3
    # Backing off: the next message is deferred at once, with no new connection.
    assert again[0].reply.code == 451 and "backing off" in again[0].reply.text
    assert not again[0].counts
    assert connections <= 3


async def test_a_421_to_data_then_a_close_is_the_servers_421_for_the_accepted() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, b"250 ok\r\n250 ok\r\n421 4.7.0 closing connection\r\n")
        writer.transport.abort()

    async with Scripted(script) as server:
        session = await open_session(server)
        # Not "out of step" (451, counted): every reply had its proper class.
        assert await send(session) == {"u@d.test": (421, "closing connection")}
