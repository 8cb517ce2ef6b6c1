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
