"""The SMTP submission listener with real clients (smtplib, aiosmtplib, raw sockets,
Postfix's smtp-source) against moto's server: what is on the queue after each reply."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator

import aiosmtplib
import pytest
from smtp_ingress_rig import IngressRig, ingress_rig

from quiver.ingress.smtp_server import AllowedNetwork, SmtpListener
from quiver.smtp.proxy_header import encode

pytestmark = pytest.mark.integration

LOCAL = (AllowedNetwork.parse("127.0.0.0/8"),)
MESSAGE = (b"From: Ann <ann@news.quiver-demo.test>\r\n"
           b"To: bob@example.com\r\n"
           b"X-Quiver-Pool: transactional\r\n"
           b"Subject: hello\r\n"
           b"X-Quiver-Campaign: spring\r\n"
           b"Message-ID: <order-42@news.quiver-demo.test>\r\n"
           b"X-Quiver-Meta-Order: 42\r\n"
           b"\r\n"
           b"Hello Bob,\r\n.leading dot\r\nbye\r\n")
STRIPPED = (b"From: Ann <ann@news.quiver-demo.test>\r\n"
            b"To: bob@example.com\r\n"
            b"Subject: hello\r\n"
            b"Message-ID: <order-42@news.quiver-demo.test>\r\n"
            b"\r\n"
            b"Hello Bob,\r\n.leading dot\r\nbye\r\n")


def short(n: object) -> bytes:
    return f"From: ann@news.quiver-demo.test\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngressRig]:
    with ingress_rig(tmp_path_factory.mktemp("smtp-ingress")) as running:
        yield running


@pytest.fixture
def open_listener(rig: IngressRig) -> Iterator[SmtpListener]:
    """Clients on loopback may send without AUTH."""
    rig.queued()
    listener = rig.listen(allowed=LOCAL)
    yield listener
    rig.stop(listener)


class Wire:
    """A raw client: bytes exactly as written, replies as read."""

    def __init__(self, address: tuple[str, int], *, preamble: bytes = b"") -> None:
        self.sock = socket.create_connection(address, timeout=30)
        if preamble:
            self.sock.sendall(preamble)
        self.buffer = b""

    def reply(self) -> str:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed; so far {lines!r} {self.buffer!r}")
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def closed(self) -> bool:
        """Whether the server closed the connection (after any replies left)."""
        try:
            return self.sock.recv(4096) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def test_smtplib_message_is_queued_byte_identical_without_control_headers(
        rig: IngressRig, open_listener: SmtpListener) -> None:
    with smtplib.SMTP(*open_listener.address, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert "pipelining" in smtp.esmtp_features and "8bitmime" in smtp.esmtp_features
        assert int(smtp.esmtp_features["size"]) == rig.client().max_message_size
        assert "smtputf8" not in smtp.esmtp_features
        # No AUTH before TLS, even offered to nobody.
        assert "auth" not in smtp.esmtp_features
        smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com", "cy@example.org"],
                      MESSAGE)
    [queued] = rig.queued()
    assert queued.raw == STRIPPED
    env = queued.envelope
    assert env.id == "order-42@news.quiver-demo.test"
    assert (env.sender, env.recipients) == ("ann@news.quiver-demo.test",
                                            ("bob@example.com", "cy@example.org"))
    assert (env.pool, env.campaign, env.meta) == ("transactional", "spring", {"order": "42"})


async def test_aiosmtplib_over_starttls(rig: IngressRig, open_listener: SmtpListener) -> None:
    _, port = open_listener.address
    smtp = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=rig.client_tls(),
                           start_tls=True, timeout=30)
    await smtp.connect()
    try:
        assert smtp.get_transport_info("sslcontext") is not None
        errors, reply = await smtp.sendmail("ann@news.quiver-demo.test", ["dan@example.com"],
                                            MESSAGE)
        assert errors == {} and reply.startswith("2.0.0 Ok: queued as order-42@")
    finally:
        await smtp.quit()
    [queued] = rig.queued()
    assert queued.raw == STRIPPED


def test_pipelined_transactions_in_one_write(rig: IngressRig,
                                             open_listener: SmtpListener) -> None:
    wire = Wire(open_listener.address)
    assert wire.reply().startswith("220 ")
    wire.send(b"EHLO client.example\r\n")
    assert "PIPELINING" in wire.reply()
    batch = b""
    for n in range(3):
        batch += (b"MAIL FROM:<ann@news.quiver-demo.test>\r\nRCPT TO:<bob@example.com>\r\n"
                  b"DATA\r\n" + short(n) + b".\r\n")
    wire.send(batch + b"QUIT\r\n")
    replies = [wire.reply()[:3] for _ in range(3 * 4 + 1)]
    assert replies == ["250", "250", "354", "250"] * 3 + ["221"]
    wire.close()
    bodies = sorted(q.raw for q in rig.queued())
    assert bodies == [short(n) for n in range(3)]


@pytest.mark.skipif(shutil.which("smtp-source") is None, reason="Postfix's smtp-source")
def test_postfix_smtp_source_pipelined_sessions(rig: IngressRig,
                                                open_listener: SmtpListener) -> None:
    host, port = open_listener.address
    done = subprocess.run(
        ["smtp-source", "-d", "-s", "4", "-m", "40", "-l", "2000", "-f",
         "ann@news.quiver-demo.test", "-t", "bob@example.com", f"{host}:{port}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    queued = rig.queued()
    assert len(queued) == 40
    assert all(q.envelope.recipients == ("bob@example.com",) for q in queued)


def test_no_auth_from_a_network_not_allowed(rig: IngressRig) -> None:
    listener = rig.listen(allowed=())
    try:
        with smtplib.SMTP(*listener.address, timeout=30) as smtp:
            smtp.ehlo("client.example")
            code, text = smtp.mail("ann@news.quiver-demo.test")
            assert code == 530 and b"5.7.0 authentication required" in text
            smtp.starttls(context=rig.client_tls())
            smtp.ehlo("client.example")
            assert smtp.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login("acme", "not-a-key")
            assert refused.value.smtp_code == 535
    finally:
        rig.stop(listener)
    # smtplib tries PLAIN, then LOGIN: two refused logins.
    assert listener.counts.auth_refused == 2
    assert rig.queued() == []


def test_smtputf8_is_refused_clearly(open_listener: SmtpListener) -> None:
    wire = Wire(open_listener.address)
    wire.reply()
    wire.send(b"EHLO client.example\r\n")
    assert "SMTPUTF8" not in wire.reply()
    wire.send(b"MAIL FROM:<ann@news.quiver-demo.test> SMTPUTF8\r\n")
    reply = wire.reply()
    assert reply.startswith("555 5.5.4 SMTPUTF8 is not supported")
    wire.close()


def test_oversize_refused_at_mail_size_and_after_data(rig: IngressRig) -> None:
    listener = rig.listen(allowed=LOCAL, client=rig.client(max_message_size=4000))
    try:
        with smtplib.SMTP(*listener.address, timeout=30) as smtp:
            smtp.ehlo("client.example")
            assert smtp.esmtp_features["size"] == "4000"
            code, text = smtp.mail("ann@news.quiver-demo.test", ["SIZE=4001"])
            assert code == 552 and text.startswith(b"5.3.4 message size 4,001 is over")
            big = short("big") + (b"y" * 76 + b"\r\n") * 60
            # A client that does not say SIZE (or lies) is refused after its DATA.
            smtp.rset()
            assert smtp.mail("ann@news.quiver-demo.test")[0] == 250
            assert smtp.rcpt("bob@example.com")[0] == 250
            code, text = smtp.data(big)
            assert code == 552 and b"over the limit of 4,000" in text
            # The session goes on: a message under the limit is accepted after it.
            smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
    finally:
        rig.stop(listener)
    assert [q.raw for q in rig.queued()] == [STRIPPED]


@pytest.mark.parametrize("body, what", [
    (b"Subject: x\r\n\r\nbare\nline\r\n.\r\n", "bare LF"),
    (b"Subject: x\r\n\r\none\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.com>\r\n"
     b"DATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n", "bare LF"),
    (b"Subject: x\r\n\r\none\r.\rMAIL FROM:<evil@example.com>\r\n.\r\n", "bare CR"),
    (b"Subject: x\r\n\r\none\r\n.\nMAIL FROM:<evil@example.com>\r\n", "bare LF"),
])
def test_bare_line_ends_and_smuggling_refused(rig: IngressRig, open_listener: SmtpListener,
                                              body: bytes, what: str) -> None:
    wire = Wire(open_listener.address)
    wire.reply()
    wire.send(b"EHLO client.example\r\n")
    wire.reply()
    wire.send(b"MAIL FROM:<ann@news.quiver-demo.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
    assert [wire.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    wire.send(body)
    reply = wire.reply()
    assert reply.startswith("554 5.5.2 " + what), reply
    assert wire.closed()
    wire.close()
    assert rig.queued() == []


def test_disconnect_mid_data_enqueues_nothing(rig: IngressRig,
                                              open_listener: SmtpListener) -> None:
    wire = Wire(open_listener.address)
    wire.reply()
    wire.send(b"EHLO c.example\r\nMAIL FROM:<ann@news.quiver-demo.test>\r\n"
              b"RCPT TO:<bob@example.com>\r\nDATA\r\n")
    assert [wire.reply()[:3] for _ in range(4)] == ["250", "250", "250", "354"]
    wire.send(b"Subject: cut\r\n\r\nhalf a mess")
    wire.close()
    # The listener still serves, and the half message was never enqueued.
    with smtplib.SMTP(*open_listener.address, timeout=30) as smtp:
        smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
    assert [q.raw for q in rig.queued()] == [STRIPPED]


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_names_the_client(rig: IngressRig, version: int) -> None:
    rig.queued()
    listener = rig.listen(allowed=(AllowedNetwork.parse("203.0.113.0/24"),),
                          proxy_protocol=True)
    try:
        header = encode(version, src=("203.0.113.7", 40000), dst=("127.0.0.1", 587))
        wire = Wire(listener.address, preamble=header)
        assert wire.reply().startswith("220 ")
        wire.send(b"EHLO c.example\r\nMAIL FROM:<ann@news.quiver-demo.test>\r\n")
        wire.reply()
        # Allowed by the address the PROXY header gave, not the socket's 127.0.0.1.
        assert wire.reply().startswith("250 ")
        wire.close()
        # Without a header the connection is dropped before the greeting.
        bare = Wire(listener.address, preamble=b"EHLO c.example\r\n")
        assert bare.closed()
        bare.close()
    finally:
        rig.stop(listener)


def test_control_header_for_another_tenant_is_refused(rig: IngressRig) -> None:
    listener = rig.listen(allowed=(AllowedNetwork.parse("127.0.0.0/8=acme"),))
    try:
        with smtplib.SMTP(*listener.address, timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"],
                              b"X-Quiver-Tenant: globex\r\n" + MESSAGE)
            assert refused.value.smtp_code == 550
            assert b"globex is not this session's tenant acme" in refused.value.smtp_error
            smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
    finally:
        rig.stop(listener)
    [queued] = rig.queued()
    assert queued.envelope.tenant == "acme"


def test_sigterm_lets_the_open_transaction_finish(rig: IngressRig) -> None:
    rig.queued()
    listener = rig.listen(allowed=LOCAL)
    address = listener.address
    busy, idle = Wire(address), Wire(address)
    busy.reply(), idle.reply()
    busy.send(b"EHLO c.example\r\nMAIL FROM:<ann@news.quiver-demo.test>\r\n"
              b"RCPT TO:<bob@example.com>\r\n")
    assert [busy.reply()[:3] for _ in range(3)] == ["250", "250", "250"]
    idle.send(b"NOOP\r\n")
    idle.reply()
    rig.listeners.remove(listener)
    stopping = asyncio.run_coroutine_threadsafe(listener.stop(timeout=60), rig.thread.loop)
    # The idle session is told at once; the open transaction may still end.
    assert idle.reply().startswith("421 4.3.2")
    busy.send(b"DATA\r\n")
    assert busy.reply().startswith("354")
    busy.send(short("last") + b".\r\n")
    assert busy.reply().startswith("250 2.0.0")
    assert busy.reply().startswith("421 4.3.2")
    assert stopping.result(timeout=60) == 0
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=5).close()
    busy.close(), idle.close()
    assert [q.raw for q in rig.queued()] == [short("last")]
