"""What the wire hands its transport: one write per pipelined group (a TLS transport seals
each write on its own, so a group written piece by piece would travel as one record per
command), and a body with the next group behind it as one buffer built in one copy."""

from __future__ import annotations

import asyncio

from quiver.smtp import framing
from quiver.smtp.wire import SmtpWire


class RecordingTransport(asyncio.Transport):
    """The transport side of a connection that only records what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def writelines(self, list_of_data) -> None:  # type: ignore[no-untyped-def, override]
        raise AssertionError("a group must be one write, not one per command")

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


async def test_a_pipelined_group_is_one_write_and_its_replies_one_wait() -> None:
    wire = SmtpWire(asyncio.get_running_loop())
    transport = RecordingTransport()
    wire.connection_made(transport)
    wire.data_received(b"220 mx.test ESMTP\r\n")
    assert await wire.exchange(None, replies=1, timeout=5) == [(220, "mx.test ESMTP")]
    group = [framing.mail("a@news.test"), framing.rcpt("u@d.test"), framing.rcpt("v@d.test"),
             b"DATA\r\n"]
    waiter = wire.exchange(group, replies=4, timeout=5)
    assert transport.writes == [b"".join(group)]
    wire.data_received(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert [code for code, _ in await waiter] == [250, 250, 250, 354]


def test_the_next_group_rides_behind_the_end_of_data_in_the_same_buffer() -> None:
    group = framing.mail("a@news.test") + framing.rcpt("u@d.test") + b"DATA\r\n"
    payload = framing.data_payload(b"Subject: t\n\n.dot\nbody", then=group)
    assert payload == b"Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n" + group
    assert framing.data_payload(b"x\r\n") == b"x\r\n.\r\n"
