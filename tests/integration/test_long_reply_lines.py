"""Reply lines longer than 4,096 octets from a scripted MX on loopback: read to their
end, kept as their code and first 512 octets of text, and the session carries on (as
Postfix does), whether the line is in the EHLO reply, an RCPT reply or the final reply."""

from __future__ import annotations

import pytest
from test_smtp_wire import EHLO_PIPELINING, Scripted, open_session

from quiver.smtp.reader import KEPT_TEXT, MAX_LINE

pytestmark = pytest.mark.integration

LONG = b"x" * (MAX_LINE * 3)


async def test_over_long_reply_lines_are_truncated_and_the_transaction_carries_on() -> None:
    async def script(reader, writer):
        await server.greet(reader, writer, ehlo=b"250-mx.test " + LONG + b"\r\n" + EHLO_PIPELINING)
        await server.group(reader, writer,
                           b"250 ok\r\n250 2.1.5 ok " + LONG + b"\r\n354 go\r\n")
        await server.body(reader)
        writer.write(b"250 2.0.0 queued as " + LONG + b"\r\n")
        await writer.drain()
        await server.line(reader)  # QUIT
        writer.write(b"221 bye\r\n")
        await writer.drain()

    async with Scripted(script) as server:
        session = await open_session(server)
        try:
            assert session.pipelining  # the extensions after the long line were read
            result = await session.send(sender="a@news.test", recipients=["u@d.test"],
                                        message=b"Subject: t\r\n\r\nbody\r\n")
        finally:
            await session.close()
    reply = result.replies["u@d.test"]
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    # The first 512 octets of the line's text, less the enhanced code split off it.
    assert reply.text == "queued as " + "x" * (KEPT_TEXT - len("2.0.0 queued as "))
    assert server.seen[-1].startswith(b"QUIT")  # still in step after all of it
