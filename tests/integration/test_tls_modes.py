"""TLS modes per destination against scripted MXes on loopback, through the scheduler:
an MX that advertises STARTTLS and then fails the handshake gets its mail in plaintext
in the same attempt when the destination is `opportunistic` (and is sent plaintext from
then on, for a while), never when it is `required` or `verify`; every attempt says which
mode it used.

And pipelining over TLS: a real TLS session whose server reads the TLS records
themselves (through memory BIOs), to count how many records carried each pipelined
group of commands."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_smtp_wire import MESSAGE, Scripted, scripted_policy_text

from quiver.delivery import Attempt
from quiver.devstack.servers.tls import issue_cert, make_local_ca
from quiver.policy import parse_policy
from quiver.routing.mx import MxResolver
from quiver.routing.safety import DestinationGuard
from quiver.routing.sources import SourcePicker
from quiver.scheduler.scheduler import Scheduler
from quiver.scheduler.tls import PLAINTEXT_FALLBACK, unverified_context
from quiver.smtp.session import Egress, SmtpSession, Target

pytestmark = pytest.mark.integration

# A TLS alert record: fatal (2), handshake_failure (40).
HANDSHAKE_FAILURE = b"\x15\x03\x03\x00\x02\x02\x28"
ONE_PER_CONNECTION = '[[throttles]]\nsource = "*"\nmax_messages_per_connection = 1'


class Mx:
    """A line-by-line MX. `starttls`: "broken" advertises STARTTLS, says 220 to it and
    answers the ClientHello with a handshake_failure alert; "refused" answers it 454;
    None does not offer it. Counts connections, STARTTLS commands and deliveries."""

    def __init__(self, starttls: str | None) -> None:
        self.starttls = starttls
        self.connections = 0
        self.starttls_seen = 0
        self.mail_seen = 0
        self.delivered = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        self.connections += 1
        writer.write(b"220 mx.test ESMTP\r\n")
        offer = b"250-STARTTLS\r\n" if self.starttls else b""
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-mx.test\r\n" + offer + b"250 PIPELINING\r\n")
            elif verb == b"STAR":
                self.starttls_seen += 1
                if self.starttls == "refused":
                    writer.write(b"454 4.7.0 TLS not available due to local problem\r\n")
                else:
                    writer.write(b"220 2.0.0 ready to start TLS\r\n")
                    await writer.drain()
                    await reader.read(5)  # the ClientHello's record header
                    writer.write(HANDSHAKE_FAILURE)
                    await writer.drain()
                    return
            elif verb == b"MAIL":
                self.mail_seen += 1
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                self.delivered += 1
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()


def scheduler(server: Scripted, extra: str = "") -> Scheduler:
    # verify_tls = false (in scripted_policy_text): the default mode is opportunistic.
    policy = parse_policy(scripted_policy_text(server.port, extra))
    return Scheduler(policy=policy, picker=SourcePicker(policy),
                     resolver=MxResolver(routes=dict(policy.delivery.routes)))


async def deliver(s: Scheduler, rcpt: str) -> Attempt:
    (attempt,) = await asyncio.wait_for(s.deliver(
        pool="p", domain="d.test", sender="a@news.test", recipients=[rcpt],
        message=MESSAGE), 30)
    return attempt


async def test_opportunistic_tls_gets_the_mail_through_a_broken_starttls_in_one_attempt(
        ) -> None:
    mx = Mx("broken")
    async with Scripted(mx) as server:
        s = scheduler(server, ONE_PER_CONNECTION)
        try:
            first = await deliver(s, "u1@d.test")
            after_first = (mx.connections, mx.starttls_seen)
            second = await deliver(s, "u2@d.test")
        finally:
            await s.close()
    # The first attempt: STARTTLS failed, and the same attempt reconnected in plaintext.
    assert first.reply.code == 250, first.reply
    assert (first.path.tls, first.path.tls_mode) == (None, PLAINTEXT_FALLBACK)
    assert first.counts
    assert after_first == (2, 1)
    # Remembered: the next connection goes plaintext without trying the handshake again.
    assert second.reply.code == 250, second.reply
    assert second.path.tls_mode == PLAINTEXT_FALLBACK
    assert (mx.connections, mx.starttls_seen, mx.delivered) == (3, 1, 2)


@pytest.mark.parametrize("mode", ["required", "verify"])
async def test_required_and_verify_never_fall_back_to_plaintext(mode: str) -> None:
    mx = Mx("broken")
    rule = f'[[tls.rules]]\ndomain = "d.test"\nmode = "{mode}"'
    async with Scripted(mx) as server:
        s = scheduler(server, rule)
        try:
            attempt = await deliver(s, "u@d.test")
        finally:
            await s.close()
    assert attempt.reply.transient and attempt.reply.enhanced == "4.7.5", attempt.reply
    assert "STARTTLS" in attempt.reply.text
    assert attempt.path.tls_mode == mode
    assert attempt.counts  # its connection was tried and failed at TLS
    assert (mx.connections, mx.starttls_seen, mx.mail_seen) == (1, 1, 0)


async def test_required_defers_a_server_that_does_not_offer_starttls() -> None:
    mx = Mx(None)
    async with Scripted(mx) as server:
        s = scheduler(server, '[tls]\ndefault = "required"')
        try:
            attempt = await deliver(s, "u@d.test")
        finally:
            await s.close()
    assert attempt.reply.transient and attempt.reply.enhanced == "4.7.4", attempt.reply
    assert attempt.path.tls_mode == "required"
    assert mx.mail_seen == 0


async def test_opportunistic_sends_plaintext_where_starttls_is_not_offered_or_refused(
        ) -> None:
    for starttls, used in ((None, "opportunistic"), ("refused", PLAINTEXT_FALLBACK)):
        mx = Mx(starttls)
        async with Scripted(mx) as server:
            s = scheduler(server)
            try:
                attempt = await deliver(s, "u@d.test")
            finally:
                await s.close()
        assert attempt.reply.code == 250, (starttls, attempt.reply)
        assert (attempt.path.tls, attempt.path.tls_mode) == (None, used)
        # A refusal leaves the plaintext session in step: no second connection needed.
        assert mx.connections == 1 and mx.delivered == 1


# --- one TLS record per pipelined group -------------------------------------------------


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ssl.SSLContext]:
    root: Path = tmp_path_factory.mktemp("tls-records")
    make_local_ca(root / "ca")
    cert, key = issue_cert(ca_dir=root / "ca", hostnames=["mx.test"], dir=root / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    yield context


class RecordCountingMx:
    """Plaintext SMTP up to STARTTLS, then TLS through an SSLObject over memory BIOs: the
    server sees the client's TLS records themselves. `groups` holds, for each thing the
    client sent as one unit (a pipelined group, a body with the next group behind it),
    how many application-data records carried it."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.groups: list[int] = []
        self.errors: list[BaseException] = []
        self._raw = b""  # received TLS bytes not yet split into records
        self._records = 0  # application-data records received so far
        self._plain = b""  # decrypted bytes not yet read

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        try:
            await self._serve(reader, writer)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
            raise

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
        assert (await reader.readline()).upper().startswith(b"STARTTLS")
        writer.write(b"220 go ahead\r\n")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await self._receive(reader, incoming)
        writer.write(outgoing.read())

        async def line() -> bytes:
            while b"\n" not in self._plain:
                await self._fill(reader, incoming, tls)
            head, _, self._plain = self._plain.partition(b"\n")
            return head + b"\n"

        async def body() -> None:
            while b"\r\n.\r\n" not in self._plain:
                await self._fill(reader, incoming, tls)
            _, _, self._plain = self._plain.partition(b"\r\n.\r\n")

        def send(data: bytes) -> None:
            tls.write(data)
            writer.write(outgoing.read())

        assert (await line()).startswith(b"EHLO")
        send(b"250-mx.test\r\n250 PIPELINING\r\n")
        mark = self._records
        for expected in (b"MAIL", b"RCPT", b"DATA"):  # message 1's group
            assert (await line()).startswith(expected)
        self.groups.append(self._records - mark)
        send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        mark = self._records
        await body()  # message 1's body, with message 2's group behind it
        for expected in (b"MAIL", b"RCPT", b"DATA"):
            assert (await line()).startswith(expected)
        self.groups.append(self._records - mark)
        send(b"250 one queued\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        mark = self._records
        await body()
        self.groups.append(self._records - mark)
        send(b"250 two queued\r\n")
        assert (await line()).startswith(b"QUIT")
        send(b"221 bye\r\n")
        await writer.drain()

    async def _receive(self, reader: asyncio.StreamReader, incoming: ssl.MemoryBIO) -> None:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the client closed")
        incoming.write(data)
        self._raw += data
        # TLS records: type (1), version (2), length (2), then the payload.
        while len(self._raw) >= 5:
            size = 5 + int.from_bytes(self._raw[3:5], "big")
            if len(self._raw) < size:
                break
            if self._raw[0] == 0x17:
                self._records += 1
            self._raw = self._raw[size:]

    async def _fill(self, reader: asyncio.StreamReader, incoming: ssl.MemoryBIO,
                    tls: ssl.SSLObject) -> None:
        while True:
            try:
                self._plain += tls.read(65536)
                return
            except ssl.SSLWantReadError:
                await self._receive(reader, incoming)


async def test_each_pipelined_group_travels_in_one_tls_record(
        server_context: ssl.SSLContext) -> None:
    mx = RecordCountingMx(server_context)
    server = await asyncio.start_server(mx, "127.0.0.1", 0)
    try:
        session = await SmtpSession.open(
            target=Target(mx_name="mx.test", ip="127.0.0.1",
                          port=server.sockets[0].getsockname()[1]),
            egress=Egress(ehlo="o1.quiver.test"), guard=DestinationGuard(["127.0.0.0/8"]),
            tls_context=unverified_context(), require_tls=True, connect_timeout=5,
            command_timeout=10)
        try:
            assert session.tls_version in ("TLSv1.2", "TLSv1.3")
            second = SimpleNamespace(sender="a@news.test", recipients=["u2@d.test"])
            one = await session.send(sender="a@news.test", recipients=["u1@d.test"],
                                     message=MESSAGE, then=second)
            assert session.pipelined is second
            two = await session.send_pipelined(message=MESSAGE)
        finally:
            await session.close()
    finally:
        server.close()
        await server.wait_closed()
    assert not mx.errors, mx.errors
    assert one.replies["u1@d.test"].code == 250 and two.replies["u2@d.test"].code == 250
    # MAIL+RCPT+DATA; body 1 + MAIL+RCPT+DATA of message 2; body 2: one record each.
    assert mx.groups == [1, 1, 1]
