"""The local receiving MX: real SMTP over loopback with aiosmtplib as the client."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from quiver.devstack.servers.mx import MxServer, spawn_mx, start_mx
from quiver.devstack.servers.tls import issue_cert, make_local_ca

pytestmark = pytest.mark.integration

SENDER = "bounces@sender.test"
MESSAGE = (
    b"From: Sender <sender@sender.test>\r\n"
    b"To: someone@example.test\r\n"
    b"Subject: local MX test\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"caf\xc3\xa9 bytes stay as they are\r\n"
)


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[MxServer]:
    server = start_mx(store_dir=tmp_path / "mx", tarpit_seconds=0.05)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tls")
    ca_cert, _ = make_local_ca(root / "ca")
    cert, key = issue_cert(ca_dir=root / "ca", hostnames=["mx.local.test"], dir=root / "certs")
    return {"ca": ca_cert, "cert": cert, "key": key}


def client(server_address: tuple[str, int], *, source: str = "127.0.0.1",
           timeout: float = 30) -> aiosmtplib.SMTP:
    host, port = server_address
    return aiosmtplib.SMTP(
        hostname=host, port=port, source_address=(source, 0), start_tls=False,
        local_hostname="client.sender.test", timeout=timeout,
    )


async def start_transaction(smtp: aiosmtplib.SMTP) -> None:
    await smtp.ehlo()
    await smtp.mail(SENDER)


async def rcpt_code(smtp: aiosmtplib.SMTP, address: str) -> int:
    response = await smtp.execute_command(b"RCPT", b"TO:<" + address.encode() + b">")
    return response.code


async def wait_for(predicate, what: str, *, timeout: float = 30.0) -> None:
    # The server notices a closed connection a moment after the client does; the
    # deadline only catches one that never does.
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.025)


async def test_normal_message_is_stored_byte_exact_with_peer_ip(mx: MxServer) -> None:
    async with client(mx.address, source="127.0.0.3") as smtp:
        errors, reply = await smtp.sendmail(SENDER, ["someone@example.test"], MESSAGE)
    assert errors == {}
    assert reply.startswith("2.0.0")

    [record] = mx.received()
    assert record["peer_ip"] == "127.0.0.3"
    assert isinstance(record["peer_port"], int) and record["peer_port"] > 0
    assert record["helo"] == "client.sender.test"
    assert record["mail_from"] == SENDER
    assert record["rcpt_tos"] == ["someone@example.test"]
    assert record["size"] == len(MESSAGE)
    assert record["tls"] is None
    assert Path(record["file"]).read_bytes() == MESSAGE

    # The journal on disk says the same, already flushed while the server runs.
    journal = (mx.config.store_dir / "received.jsonl").read_text()
    on_disk = [json.loads(line) for line in journal.splitlines()]
    assert on_disk == [record]


@pytest.mark.parametrize(
    ("address", "code"),
    [("tempfail-1@example.test", 451), ("permfail@example.test", 550)],
)
async def test_scripted_rcpt_refusals(mx: MxServer, address: str, code: int) -> None:
    async with client(mx.address) as smtp:
        await start_transaction(smtp)
        response = await smtp.execute_command(b"RCPT", b"TO:<" + address.encode() + b">")
        assert response.code == code
        assert response.message.startswith({451: "4.3.0", 550: "5.1.1 user unknown"}[code])
        # With no recipient left, DATA has nobody to deliver to.
        assert (await smtp.execute_command(b"DATA")).code == 503
    assert mx.received() == []


async def test_one_permfail_recipient_leaves_the_others_delivered(mx: MxServer) -> None:
    recipients = ["a@example.test", "permfail-b@example.test", "c@example.test"]
    async with client(mx.address) as smtp:
        errors, _ = await smtp.sendmail(SENDER, recipients, MESSAGE)
    assert {address: r.code for address, r in errors.items()} == {"permfail-b@example.test": 550}
    [record] = mx.received()
    assert record["rcpt_tos"] == ["a@example.test", "c@example.test"]


async def test_greylist_refuses_first_attempt_and_accepts_the_retry(mx: MxServer) -> None:
    address = "greylist-7@example.test"
    async with client(mx.address) as smtp:
        await start_transaction(smtp)
        response = await smtp.execute_command(b"RCPT", b"TO:<" + address.encode() + b">")
        assert (response.code, response.message[:5]) == (451, "4.7.1")
    assert mx.received() == []
    async with client(mx.address) as smtp:
        errors, _ = await smtp.sendmail(SENDER, [address], MESSAGE)
    assert errors == {}
    assert [r["rcpt_tos"] for r in mx.received()] == [[address]]


async def test_defer2_refuses_the_first_two_rcpts_for_the_address_then_accepts(
        mx: MxServer) -> None:
    address = "Defer2-trace@example.test"
    codes = []
    for _ in range(2):
        async with client(mx.address) as smtp:
            await start_transaction(smtp)
            # Another case of the same address counts as the same address.
            rcpt = address.lower() if codes else address
            response = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode() + b">")
            codes.append((response.code, response.message[:5]))
    assert codes == [(451, "4.3.0"), (451, "4.3.0")]
    async with client(mx.address) as smtp:
        errors, _ = await smtp.sendmail(SENDER, [address, "defer-other@example.test"], MESSAGE)
    # `defer-…` without a count defers once; the address deferred twice is taken now.
    assert {a: r.code for a, r in errors.items()} == {"defer-other@example.test": 451}
    assert [r["rcpt_tos"] for r in mx.received()] == [[address]]


async def test_close421_after_n_accepted_messages(mx: MxServer) -> None:
    smtp = client(mx.address)
    await smtp.connect()
    for _ in range(3):
        errors, _ = await smtp.sendmail(SENDER, ["close421-3-x@example.test"], MESSAGE)
        assert errors == {}
    response = await smtp.execute_command(b"MAIL", b"FROM:<" + SENDER.encode() + b">")
    assert (response.code, response.message[:5]) == (421, "4.7.0")
    deadline = asyncio.get_running_loop().time() + 30
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        # The close follows the 421 at once; the deadline only catches one that never comes.
        while asyncio.get_running_loop().time() < deadline:
            await smtp.noop()
            await asyncio.sleep(0.02)
    smtp.close()
    assert len(mx.received()) == 3


async def test_disconnect_in_data_drops_without_reply_and_stores_nothing(mx: MxServer) -> None:
    body = MESSAGE + b"filler line\r\n" * 2000
    async with client(mx.address) as smtp:
        await start_transaction(smtp)
        assert await rcpt_code(smtp, "disconnect-in-data@example.test") == 250
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.data(body)
    assert mx.received() == []
    await wait_for(lambda: mx.stats()["current"] == 0, "the dropped connection to be counted")


async def test_too_many_recipients_script_limits_the_transaction_to_two(mx: MxServer) -> None:
    async with client(mx.address) as smtp:
        await start_transaction(smtp)
        codes = [await rcpt_code(smtp, f"toomany-{i}@example.test") for i in range(3)]
        assert codes == [250, 250, 452]
        # Once the transaction holds a toomany recipient, ordinary ones hit the same limit.
        assert await rcpt_code(smtp, "plain@example.test") == 452
        data = await smtp.data(MESSAGE)
        assert data.code == 250
    [record] = mx.received()
    assert record["rcpt_tos"] == ["toomany-0@example.test", "toomany-1@example.test"]


async def test_server_wide_recipient_limit(tmp_path: Path) -> None:
    server = start_mx(store_dir=tmp_path / "mx", max_rcpts_per_txn=3)
    try:
        async with client(server.address) as smtp:
            await start_transaction(smtp)
            codes = [await rcpt_code(smtp, f"r{i}@example.test") for i in range(4)]
        assert codes == [250, 250, 250, 452]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("address", "code", "enhanced"),
    [("blocked@example.test", 554, "5.7.1"), ("permfail-data@example.test", 550, "5.1.1")],
)
async def test_scripted_refusals_at_end_of_data(
    mx: MxServer, address: str, code: int, enhanced: str
) -> None:
    async with client(mx.address) as smtp:
        await start_transaction(smtp)
        assert await rcpt_code(smtp, address) == 250
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.data(MESSAGE)
        assert refused.value.code == code
        assert refused.value.message.startswith(enhanced)
    assert mx.received() == []
    assert list((mx.config.store_dir / "messages").iterdir()) == []


async def test_tarpit_delays_replies_but_accepts(mx: MxServer) -> None:
    async with client(mx.address) as smtp:
        errors, _ = await smtp.sendmail(SENDER, ["tarpit@example.test"], MESSAGE)
    assert errors == {}
    assert len(mx.received()) == 1


async def test_tarpit_outlasts_a_short_client_timeout(tmp_path: Path) -> None:
    server = start_mx(store_dir=tmp_path / "mx", tarpit_seconds=30)
    try:
        async with client(server.address) as smtp:
            await start_transaction(smtp)
            with pytest.raises(aiosmtplib.SMTPTimeoutError):
                await smtp.rcpt("tarpit@example.test", timeout=0.5)
    finally:
        server.stop()


async def test_starttls_verifies_the_mx_hostname_against_the_local_ca(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    server = start_mx(store_dir=tmp_path / "mx", tls_cert=certs["cert"], tls_key=certs["key"])
    try:
        async with client(server.address) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("starttls")
            context = ssl.create_default_context(cafile=certs["ca"])
            assert context.check_hostname
            await smtp.starttls(server_hostname="mx.local.test", tls_context=context)
            errors, _ = await smtp.sendmail(SENDER, ["someone@example.test"], MESSAGE)
        assert errors == {}
        [record] = server.received()
        assert record["tls"] in {"TLSv1.2", "TLSv1.3"}
        assert Path(record["file"]).read_bytes() == MESSAGE

        async with client(server.address) as smtp:
            await smtp.ehlo()
            context = ssl.create_default_context(cafile=certs["ca"])
            with pytest.raises(ssl.SSLCertVerificationError):
                await smtp.starttls(server_hostname="wrong.local.test", tls_context=context)
        assert len(server.received()) == 1
    finally:
        server.stop()


async def test_starttls_can_be_withheld(tmp_path: Path, certs: dict[str, Path]) -> None:
    server = start_mx(store_dir=tmp_path / "mx", tls_cert=certs["cert"],
                      tls_key=certs["key"], offer_starttls=False)
    try:
        async with client(server.address) as smtp:
            await smtp.ehlo()
            assert not smtp.supports_extension("starttls")
            errors, _ = await smtp.sendmail(SENDER, ["someone@example.test"], MESSAGE)
        assert errors == {}
        assert server.received()[0]["tls"] is None
    finally:
        server.stop()


def test_issued_certificate_is_reused_until_the_names_change(tmp_path: Path) -> None:
    ca_dir, cert_dir = tmp_path / "ca", tmp_path / "certs"
    cert, key = issue_cert(ca_dir=ca_dir, hostnames=["mx.local.test"], dir=cert_dir)
    first = (cert.read_bytes(), key.read_bytes())
    again = issue_cert(ca_dir=ca_dir, hostnames=["mx.local.test"], dir=cert_dir)
    assert (again[0].read_bytes(), again[1].read_bytes()) == first
    widened = issue_cert(ca_dir=ca_dir, hostnames=["mx.local.test"], ips=["127.0.0.1"],
                         dir=cert_dir)
    widened_cert = widened[0].read_bytes()
    assert widened_cert != first[0]
    # A new CA invalidates what the old one signed.
    (ca_dir / "ca.crt").unlink()
    reissued = issue_cert(ca_dir=ca_dir, hostnames=["mx.local.test"], ips=["127.0.0.1"],
                          dir=cert_dir)
    assert reissued[0].read_bytes() != widened_cert
    context = ssl.create_default_context(cafile=ca_dir / "ca.crt")
    context.load_cert_chain(reissued[0], reissued[1])  # the key matches the certificate
    assert oct(reissued[1].stat().st_mode & 0o777) == "0o600"


async def test_concurrent_connections_are_counted_per_peer(mx: MxServer) -> None:
    clients = [client(mx.address, source="127.0.0.4") for _ in range(3)]
    await asyncio.gather(*(c.connect() for c in clients))
    stats = mx.stats()
    assert stats["peers"]["127.0.0.4"]["current"] == 3
    for c in clients:
        await c.sendmail(SENDER, ["someone@example.test"], MESSAGE)
    await asyncio.gather(*(c.quit() for c in clients))
    await wait_for(lambda: mx.stats()["current"] == 0, "all connections to close")
    peer = mx.stats()["peers"]["127.0.0.4"]
    assert peer == {"current": 0, "max_concurrent": 3, "connections": 3, "messages": 3}
    assert mx.stats()["max_concurrent"] == 3
    mx.stop()  # stop writes the same figures to stats.json
    written = json.loads((mx.config.store_dir / "stats.json").read_text())
    assert written["peers"]["127.0.0.4"] == peer


async def test_numbering_continues_across_restarts(tmp_path: Path) -> None:
    for expected in ("1.eml", "2.eml"):
        server = start_mx(store_dir=tmp_path / "mx")
        try:
            async with client(server.address) as smtp:
                await smtp.sendmail(SENDER, ["someone@example.test"], MESSAGE)
            assert Path(server.received()[0]["file"]).name == expected
        finally:
            server.stop()
    assert len((tmp_path / "mx" / "received.jsonl").read_text().splitlines()) == 2


async def test_subprocess_mode_serves_and_writes_stats_on_sigterm(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    store = tmp_path / "mx"
    process = spawn_mx(store_dir=store, tls_cert=certs["cert"], tls_key=certs["key"])
    try:
        assert process.address[0] == "127.0.0.1" and process.address[1] > 0
        async with client(process.address, source="127.0.0.5") as smtp:
            await smtp.ehlo()
            await smtp.starttls(server_hostname="mx.local.test",
                                tls_context=ssl.create_default_context(cafile=certs["ca"]))
            errors, _ = await smtp.sendmail(SENDER, ["someone@example.test"], MESSAGE)
        assert errors == {}
        running = process.stats()  # SIGUSR1 snapshot while it serves
        assert running["peers"]["127.0.0.5"]["messages"] == 1
    finally:
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=15) == 0
        process.stop()

    stats = json.loads((store / "stats.json").read_text())
    assert stats["messages"] == 1
    assert stats["peers"]["127.0.0.5"]["connections"] == 1
    [record] = process.received()
    assert record["peer_ip"] == "127.0.0.5"
    assert record["tls"] in {"TLSv1.2", "TLSv1.3"}
    assert Path(record["file"]).read_bytes() == MESSAGE
