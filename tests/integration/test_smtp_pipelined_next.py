"""The next message's MAIL, RCPT and DATA written behind the current body (RFC 2920 3.1),
against scripted servers on loopback: the bytes on the wire, and what each message gets
when the server fails between the two transactions."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest
from test_smtp_wire import (
    MESSAGE,
    Scripted,
    deliver_each,
    open_session,
    scripted_policy,
    scripted_scheduler,
    until,
)

from quiver.scheduler.budget import RateLimiter
from quiver.smtp.session import SessionError, SmtpSession

pytestmark = pytest.mark.integration


class Envelope(NamedTuple):
    sender: str
    recipients: list[str]


FIRST = Envelope("a@news.test", ["u1@d.test"])
SECOND = Envelope("a@news.test", ["u2@d.test"])
GROUP_OK = b"250 ok\r\n250 ok\r\n354 go\r\n"


async def first_then_next(server: Scripted, reader, writer, replies: bytes) -> None:
    """Greet, take the first transaction's body, read the next envelope pipelined
    behind it, and write `replies` (the first's final reply, then the next's)."""
    await server.greet(reader, writer)
    await server.accept(reader, writer, final=b"")
    for _ in range(3):
        await server.line(reader)
    writer.write(replies)
    await writer.drain()


async def send(session: SmtpSession[Envelope], envelope: Envelope,
               then: Envelope | None = None) -> dict[str, tuple[int, str]]:
    """Send `envelope`: the body of the one the session holds, if it is that one (the
    same object), else a transaction of its own (which abandons any held one)."""
    if envelope is session.pipelined:
        result = await session.send_pipelined(message=MESSAGE, then=then)
    else:
        result = await session.send(sender=envelope.sender, recipients=envelope.recipients,
                                    message=MESSAGE, then=then)
    return {r: (reply.code, reply.text) for r, reply in result.replies.items()}


async def test_the_next_envelope_travels_with_the_body_and_is_answered_with_it() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, GROUP_OK)
        await server.body(reader)
        # Readable before the body was answered: written in the same go as the body.
        lines = [await asyncio.wait_for(server.line(reader), 2) for _ in range(3)]
        assert lines == [b"MAIL FROM:<a@news.test>\r\n", b"RCPT TO:<u2@d.test>\r\n",
                         b"DATA\r\n"]
        writer.write(b"250 first queued\r\n" + GROUP_OK)
        await server.body(reader)
        writer.write(b"250 second queued\r\n")
        assert await server.line(reader) == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert await send(session, FIRST, then=SECOND) == {"u1@d.test": (250, "first queued")}
        assert await send(session, SECOND) == {"u2@d.test": (250, "second queued")}
        assert session.transactions == 2 and session.messages_sent == 2
        await session.close()


async def test_a_421_to_the_pipelined_mail_is_the_next_messages_reply() -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer,
                              b"250 first queued\r\n421 4.7.0 enough for now\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session, FIRST, then=SECOND))["u1@d.test"][0] == 250
        # The close is the server's: the second message gets its 421, not a local error.
        assert await send(session, SECOND) == {"u2@d.test": (421, "enough for now")}


async def test_a_close_right_after_answering_the_body_leaves_the_next_unattempted() -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"250 first queued\r\n")

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session, FIRST, then=SECOND))["u1@d.test"][0] == 250
        with pytest.raises(SessionError) as info:
            await send(session, SECOND)
    assert info.value.stage == "reused"  # nothing of it was accepted: queued again, no attempt


async def test_a_close_before_the_body_is_answered_is_that_messages_attempt() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.group(reader, writer, GROUP_OK)
        await server.body(reader)

    async with Scripted(script) as server:
        session = await open_session(server)
        with pytest.raises(SessionError) as info:
            await send(session, FIRST, then=SECOND)
    assert info.value.stage == "transaction"
    assert info.value.reply.code == 451


async def test_a_refused_message_does_not_stop_the_one_pipelined_behind_it() -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"554 5.7.1 content refused\r\n" + GROUP_OK)
        await server.body(reader)
        writer.write(b"250 second queued\r\n")
        await writer.drain()

    async with Scripted(script) as server:
        session = await open_session(server)
        assert await send(session, FIRST, then=SECOND) == {"u1@d.test": (554, "content refused")}
        assert await send(session, SECOND) == {"u2@d.test": (250, "second queued")}


async def test_closing_with_a_pipelined_envelope_open_aborts_instead_of_quitting() -> None:
    closed = asyncio.Event()

    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"250 first queued\r\n" + GROUP_OK)
        # Awaiting the second body: a QUIT now would be read as message text.
        assert await reader.read() == b""
        closed.set()

    async with Scripted(script) as server:
        session = await open_session(server)
        await send(session, FIRST, then=SECOND)
        await session.close()
        await asyncio.wait_for(closed.wait(), 5)
    assert b"QUIT\r\n" not in server.seen


async def test_a_send_for_another_envelope_than_the_pipelined_one_is_refused() -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"250 first queued\r\n" + GROUP_OK)
        await reader.read()

    async with Scripted(script) as server:
        session = await open_session(server)
        await send(session, FIRST, then=SECOND)
        with pytest.raises(SessionError) as info:
            await send(session, Envelope("a@news.test", ["other@d.test"]))
        assert not session.is_open
    assert info.value.stage == "reused"



async def test_a_next_message_not_written_behind_the_body_is_still_held_and_sent_whole(
) -> None:
    """A recipient that cannot go on the wire keeps the next envelope out of the group
    behind the body; the session holds the message all the same, and sending it writes
    its own MAIL, RCPT and DATA, with the unsafe recipient refused here."""
    async def script(reader, writer):
        await server.greet(reader, writer)
        await server.accept(reader, writer, final=b"250 first queued\r\n")
        # Nothing behind the body: the next line is the held message's own MAIL.
        assert (await server.line(reader)).startswith(b"MAIL FROM:")
        assert await server.line(reader) == b"RCPT TO:<u2@d.test>\r\n"
        assert await server.line(reader) == b"DATA\r\n"
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await server.body(reader)
        writer.write(b"250 second queued\r\n")
        assert await server.line(reader) == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    mixed = Envelope("a@news.test", ["u2@d.test", "bad\r\nRSET@d.test"])
    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session, FIRST, then=mixed))["u1@d.test"][0] == 250
        assert session.pipelined is mixed
        assert session.transactions == 1  # its group did not go out behind the body
        replies = await send(session, mixed)
        assert session.pipelined is None
        await session.close()
    assert replies["u2@d.test"] == (250, "second queued")
    assert replies["bad\r\nRSET@d.test"][0] == 553
    assert session.transactions == 2

@pytest.mark.parametrize("pipeline_next", [True, False], ids=["on", "off"])
async def test_through_the_scheduler_a_backlog_goes_one_round_trip_per_message(
        pipeline_next: bool) -> None:
    """One connection, ten queued messages: every envelope after the first arrives
    behind the previous body (none does with delivery.pipeline_next off), and every
    message is delivered once."""
    count = 10
    behind_body = 0

    async def script(reader, writer):
        nonlocal behind_body
        await server.greet(reader, writer)
        await server.group(reader, writer, GROUP_OK)
        for n in range(count):
            await server.body(reader)
            # Was the next MAIL already sent with the body? Peek without waiting long.
            try:
                line = await asyncio.wait_for(server.line(reader), 0.3)
            except TimeoutError:
                line = b""
            if line.startswith(b"MAIL"):
                behind_body += 1
                await server.line(reader)
                await server.line(reader)
                writer.write(f"250 queued {n}\r\n".encode() + GROUP_OK)
                continue
            writer.write(f"250 queued {n}\r\n".encode())
            await writer.drain()
            if n + 1 < count:
                if not line:
                    line = await server.line(reader)
                assert line.startswith(b"MAIL")
                await server.line(reader)
                await server.line(reader)
                writer.write(GROUP_OK)
        assert await server.line(reader) == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    async with Scripted(script) as server:
        scheduler = scripted_scheduler(
            server, "[[throttles]]\nsource = \"*\"\nmax_connections = 1",
            delivery=f"pipeline_next = {str(pipeline_next).lower()}")
        try:
            results = await deliver_each(
                scheduler, [f"u{n}@d.test" for n in range(count)], timeout=20)
        finally:
            await scheduler.close()
    codes = [a.reply.code for attempts in results for a in attempts]
    assert codes == [250] * count
    assert sorted(int(a.reply.text.split()[-1]) for r in results for a in r) == list(range(count))
    # The first message went alone (nothing was queued behind it yet); the rest pipelined.
    assert behind_body == (count - 1 if pipeline_next else 0)


def test_a_rate_limiter_gives_a_token_now_or_says_no_without_waiting() -> None:
    limiter = RateLimiter(per_second=2)
    # The first, and one more: a send that wakes late may catch up by one interval.
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()  # the next one is half a second away


async def test_503s_to_a_pipelined_group_are_not_bounces_and_stop_the_pipelining() -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"250 first queued\r\n" + (
            b"503 5.5.1 bad sequence of commands\r\n" * 3))
        await reader.read()

    async with Scripted(script) as server:
        session = await open_session(server)
        assert (await send(session, FIRST, then=SECOND))["u1@d.test"][0] == 250
        with pytest.raises(SessionError) as info:
            await send(session, SECOND)
    # Queued again, unattempted; the caller is told to stop pipelining behind the dot.
    assert info.value.stage == "reused" and info.value.reply.code == 451
    assert session.pipeline_next_failed is not None and "503" in session.pipeline_next_failed


@pytest.mark.parametrize(("group_replies", "refusal"), [
    # A refused MAIL: the 503s to its RCPT and DATA are its consequence.
    (b"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n",
     (550, "sender refused")),
    # Every RCPT refused: the 503 to DATA is its consequence.
    (b"250 ok\r\n550 5.1.1 no such user\r\n"
     b"503 5.5.1 valid RCPT command must precede DATA\r\n", (550, "no such user")),
], ids=["refused-mail", "every-rcpt-refused"])
async def test_503s_that_follow_a_refusal_are_in_sequence_and_the_refusal_is_the_reply(
        group_replies: bytes, refusal: tuple[int, str]) -> None:
    async def script(reader, writer):
        await first_then_next(server, reader, writer, b"250 first queued\r\n" + group_replies)
        await reader.read()

    async with Scripted(script) as server:
        session = await open_session(server)
        await send(session, FIRST, then=SECOND)
        assert await send(session, SECOND) == {"u2@d.test": refusal}
    assert session.pipeline_next_failed is None


async def test_a_server_silent_after_the_dot_gets_no_more_pipelined_commands() -> None:
    """It answers the body, then never the commands behind it: after one command
    timeout the queued message is sent again on a new connection (unattempted), and
    that (source, site) no longer pipelines behind the end of data."""
    connections = 0
    behind_body_later = 0

    async def script(reader, writer):
        nonlocal connections, behind_body_later
        connections += 1
        await server.greet(reader, writer)
        while True:
            for _ in range(3):
                if not (await server.line(reader)).strip():
                    return
            writer.write(GROUP_OK)
            await writer.drain()
            await server.body(reader)
            try:
                line = await asyncio.wait_for(server.line(reader), 0.2)
            except TimeoutError:
                line = b""
            writer.write(b"250 queued\r\n")
            await writer.drain()
            if connections == 1 and line.startswith(b"MAIL"):
                await reader.read()  # the rest of the group: never answered
                return
            if line.startswith(b"MAIL"):
                behind_body_later += 1
            if line.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                return
            if line:
                server.seen.append(line)  # the next MAIL, read already: answer below
                writer.write(b"250 ok\r\n")
                await server.line(reader)
                await server.line(reader)
                writer.write(b"250 ok\r\n354 go\r\n")
                await writer.drain()
                await server.body(reader)
                writer.write(b"250 queued\r\n")
                await writer.drain()

    async with Scripted(script) as server:
        scheduler = scripted_scheduler(
            server, '[[throttles]]\nsource = "*"\nmax_connections = 1',
            delivery='command_timeout = "1s"')
        try:
            results = await deliver_each(
                scheduler, [f"u{n}@d.test" for n in range(4)], timeout=20)
            (queue,) = scheduler.queues.values()
            assert queue.pipelining_broken
            # A policy reload does not turn it back on for this server.
            scheduler.apply_policy(scripted_policy(server, '[[throttles]]\nsource = "*"\n'
                                                           'max_connections = 1'))
            assert queue.pipelining_broken and queue.pipeline_next
        finally:
            await scheduler.close()
    assert [a.reply.code for r in results for a in r] == [250] * 4
    assert all(a.counts for r in results for a in r)  # one attempt each, none lost
    assert connections == 2 and behind_body_later == 0


async def test_a_pipelined_job_put_back_during_another_connections_backoff_is_answered() -> None:
    """Connection A carries J1 with J2's envelope behind it; meanwhile connection B fails
    (backoff, and a drain of the queue, which does not hold J2). A's server answers J1
    and closes: J2 is deferred at once, unattempted, instead of waiting for a worker."""
    arrivals = 0
    j2_sent = asyncio.Event()

    async def script(reader, writer):
        nonlocal arrivals
        arrivals += 1
        if arrivals > 1:  # B: closes before its banner once J2 is pipelined on A
            await j2_sent.wait()
            writer.transport.abort()
            return
        await server.greet(reader, writer)
        await server.group(reader, writer, GROUP_OK)
        await server.body(reader)
        for _ in range(3):
            await server.line(reader)
        j2_sent.set()
        # J1 is answered once B's failure has backed the site off (and drained its queue).
        await until(lambda: any(q.backing_off() for q in scheduler.queues.values()))
        writer.write(b"250 first queued\r\n")
        await writer.drain()
        writer.transport.abort()

    async with Scripted(script) as server:
        scheduler = scripted_scheduler(
            server, '[retry]\nsite_backoff = "30s"\n'
                    '[[throttles]]\nsource = "*"\nmax_connections = 2')
        try:
            results = await deliver_each(
                scheduler, [f"u{n}@d.test" for n in (1, 2, 3)], timeout=5)
        finally:
            await scheduler.close()
    first, second, third = (attempts[0] for attempts in results)
    assert first.reply.code == 250
    for later in (second, third):
        assert later.reply.code in (421, 451)
    # B was opened for J3 and failed: J3's attempt. J2, put back, was never tried.
    assert third.counts and not second.counts
