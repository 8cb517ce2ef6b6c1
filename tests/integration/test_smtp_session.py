"""The SMTP session against the local MX: STARTTLS verifies the MX name on the
pre-connected socket Quiver always uses (a client handed a connected socket and no host
name could skip that check), and the destination guard refuses private addresses before
any connection is made."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from quiver.devstack.servers.mx import start_mx
from quiver.devstack.servers.tls import issue_cert, make_local_ca
from quiver.routing.safety import DestinationGuard
from quiver.smtp.session import Egress, SessionError, SmtpSession, Target

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("session")
    ca, _ = make_local_ca(root / "ca")
    cert, key = issue_cert(ca_dir=root / "ca", hostnames=["mx.right.test"], dir=root / "tls")
    server = start_mx(store_dir=root / "mx", tls_cert=cert, tls_key=key,
                      hostname="mx.right.test")
    context = ssl.create_default_context(cafile=str(ca))
    try:
        yield server, context
    finally:
        server.stop()


async def open_session(server, context, name: str) -> SmtpSession:
    return await SmtpSession.open(
        target=Target(mx_name=name, ip="127.0.0.1", port=server.address[1]),
        egress=Egress(ehlo="o1.quiver.local.test", local_ip="127.0.0.3"),
        guard=DestinationGuard(["127.0.0.0/8"]), tls_context=context,
        connect_timeout=5, command_timeout=10)


async def test_starttls_verifies_the_mx_name(mx) -> None:
    server, context = mx
    session = await open_session(server, context, "mx.right.test")
    try:
        assert session.tls_version in ("TLSv1.2", "TLSv1.3")
        result = await session.send(sender="a@news.quiver-demo.test",
                                    recipients=["ok@right.test", "permfail-1@right.test"],
                                    message=b"Subject: t\r\n\r\nbody\r\n.leading dot\r\n")
        assert result.replies["ok@right.test"].code == 250
        assert result.replies["permfail-1@right.test"].code == 550
    finally:
        await session.close()
    (received,) = [r for r in server.received() if "ok@right.test" in r["rcpt_tos"]]
    assert received["peer_ip"] == "127.0.0.3" and received["tls"]
    # Dot-stuffed on the wire, restored by the receiver: the body arrives intact.
    assert Path(received["file"]).read_bytes().endswith(b"\r\n.leading dot\r\n")


async def test_a_certificate_for_another_name_is_refused_not_skipped(mx) -> None:
    server, context = mx
    with pytest.raises(SessionError) as info:
        await open_session(server, context, "mx.wrong.test")
    assert info.value.stage == "tls"
    assert info.value.reply.code == 421 and info.value.reply.enhanced == "4.7.5"
    assert "mx.wrong.test" in info.value.reply.text


@pytest.mark.parametrize("ip", ["10.0.0.1", "169.254.169.254", "127.0.0.1"])
async def test_guard_refuses_before_connecting(ip: str, monkeypatch) -> None:
    def no_socket(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(SessionError) as info:
        await SmtpSession.open(
            target=Target(mx_name="mx.evil.test", ip=ip, port=25),
            egress=Egress(ehlo="o1.example.com"), guard=DestinationGuard(),
            tls_context=None, connect_timeout=1, command_timeout=1)
    # Its own stage: a refusal made here is never a connection's (or a proxy's) failure.
    assert info.value.stage == "forbidden" and info.value.reply.permanent
    assert "refusing to connect" in info.value.reply.text


class _Next:
    def __init__(self, sender: str, recipients: list[str]) -> None:
        self.sender = sender
        self.recipients = recipients


async def test_a_transaction_is_timed_from_its_mail_from_and_sized_as_sent(mx) -> None:
    """`elapsed_ms` runs from writing MAIL FROM to the last reply, on the session's clock:
    for a message whose envelope went out behind the previous body, from that write."""
    server, context = mx
    session = await open_session(server, context, "mx.right.test")
    ticks: list[float] = []

    def clock() -> float:  # one second per reading: the readings are the transaction's
        ticks.append(float(len(ticks)))
        return ticks[-1]

    session.clock = clock
    first, second = b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\nsecond body\r\n"
    try:
        one = await session.send(sender="a@news.quiver-demo.test", recipients=["ok@right.test"],
                                 message=first,
                                 then=_Next("a@news.quiver-demo.test", ["ok-2@right.test"]))
        # Read at its start, when the next envelope was written behind its body, and at
        # its DATA reply.
        assert ticks == [0.0, 1.0, 2.0]
        assert (one.elapsed_ms, one.size) == (2000, len(first))
        assert session.pipelined is not None
        two = await session.send_pipelined(message=second)
        assert two.replies["ok-2@right.test"].code == 250
        # Pipelined behind the first body (tick 1) if the server offers PIPELINING;
        # otherwise its MAIL went out at its own start (tick 3). Its end: tick 4.
        started = 1.0 if session.pipelining else 3.0
        assert (two.elapsed_ms, two.size) == (round((ticks[-1] - started) * 1000), len(second))
    finally:
        await session.close()
