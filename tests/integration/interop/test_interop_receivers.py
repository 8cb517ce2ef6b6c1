"""The receivers report what a client did: the suite's checks can pass as well as fail.

An independent SMTP client (stdlib sockets and ssl, not Quiver's wire code) speaks
to each receiver over verified STARTTLS, once sending MAIL FROM with BODY=8BITMIME,
RCPT and DATA as one pipelined write, once one command at a time without BODY=.
What the suite reads back must tell the two apart: Exim's `<=` line (L vs L-,
M8S=8 vs 0), Haraka's stored record (BODY=), Postfix's logged MAIL FROM parameters.
(Haraka's own "pipe" flag is not used: it is set only when a pipelined command
arrives while an earlier one's hooks are still running, so it misses groups that
its synchronous plugins answer at once.)
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from stackrig import Running

from interop.exim_receiver import Accepted, EximReceiver
from interop.haraka_receiver import HarakaReceiver, Stored
from interop.interop_rig import EXIM, HARAKA, POSTFIX
from interop.postfix_receiver import PostfixReceiver
from interop.receivers import Site

pytestmark = [pytest.mark.integration, pytest.mark.interop]

TIMEOUT = 30.0
T = TypeVar("T")


class Client:
    """A minimal SMTP client: replies are read whole (multi-line), commands sent raw."""

    def __init__(self, site: Site, port: int, ca_file: Path) -> None:
        self.site = site
        self.sock: socket.socket = socket.create_connection((site.ip, port), timeout=TIMEOUT)
        self.ca_file = ca_file
        self.reader = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.reader.readline()
            assert line, "connection closed"
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[0][:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        assert self.reply()[0] == 220
        assert self.command("EHLO client.interop.test")[0] == 250
        assert self.command("STARTTLS")[0] == 220
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self.reader.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.site.mx)
        self.reader = self.sock.makefile("rb")
        assert self.command("EHLO client.interop.test")[0] == 250

    def send(self, *, rcpt: str, message: bytes, pipelined: bool, body8: bool) -> None:
        commands = [f"MAIL FROM:<probe@client.interop.test>{' BODY=8BITMIME' if body8 else ''}",
                    f"RCPT TO:<{rcpt}>", "DATA"]
        if pipelined:
            self.sock.sendall("".join(c + "\r\n" for c in commands).encode())
            codes = [self.reply()[0] for _ in commands]
        else:
            codes = [self.command(c)[0] for c in commands]
        assert codes == [250, 250, 354], codes
        self.sock.sendall(message + b".\r\n")
        assert self.reply()[0] == 250
        self.command("QUIT")
        self.sock.close()


def probe(site: Site, mid: str, *, port: int, ca_file: Path, pipelined: bool, body8: bool
          ) -> None:
    text = "Grüße" if body8 else "Hello"
    message = (f"From: <probe@client.interop.test>\r\nTo: <probe@{site.domain}>\r\n"
               f"Subject: probe\r\nMessage-ID: <{mid}@client.interop.test>\r\n\r\n"
               f"{text}\r\n").encode()
    client = Client(site, port, ca_file)
    client.starttls()
    client.send(rcpt=f"probe@{site.domain}", message=message, pipelined=pipelined, body8=body8)


def eventually(found: Callable[[], T | None], *, what: str) -> T:
    deadline = time.monotonic() + TIMEOUT
    while not (value := found()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def ca_file(stack: Running) -> Path:
    assert stack.stack.ca_file is not None
    return stack.stack.ca_file


def test_exim_logs_pipelining_and_8bitmime_only_when_used(
        exim: EximReceiver, mx_port: int, ca_file: Path) -> None:
    probe(EXIM, "probe-exim-piped", port=mx_port, ca_file=ca_file, pipelined=True, body8=True)
    probe(EXIM, "probe-exim-serial", port=mx_port, ca_file=ca_file, pipelined=False,
          body8=False)

    def accepted(mid: str) -> Accepted | None:
        return next((a for a in exim.accepted() if a.message_id.startswith(mid + "@")), None)

    piped = eventually(lambda: accepted("probe-exim-piped"), what="Exim's <= line")
    serial = eventually(lambda: accepted("probe-exim-serial"), what="Exim's <= line")
    assert (piped.tls is not None, piped.pipelining, piped.body) == (True, True, "8"), piped.line
    assert (serial.tls is not None, serial.pipelining, serial.body) == (True, False, "0"), (
        serial.line)


def test_haraka_records_8bitmime_only_when_declared(
        haraka: HarakaReceiver, mx_port: int, ca_file: Path) -> None:
    probe(HARAKA, "probe-haraka-piped", port=mx_port, ca_file=ca_file, pipelined=True,
          body8=True)
    probe(HARAKA, "probe-haraka-serial", port=mx_port, ca_file=ca_file, pipelined=False,
          body8=False)

    def stored(mid: str) -> Stored | None:
        return next((s for s in haraka.stored() if s.copy.message_id.startswith(mid + "@")),
                    None)

    piped = eventually(lambda: stored("probe-haraka-piped"), what="Haraka's stored copy")
    serial = eventually(lambda: stored("probe-haraka-serial"), what="Haraka's stored copy")
    assert (piped.tls, piped.mail_params.get("BODY")) == (True, "8BITMIME")
    assert (serial.tls, serial.mail_params.get("BODY")) == (True, None)


def test_postfix_logs_the_mail_from_parameters(
        postfix: PostfixReceiver, mx_port: int, ca_file: Path) -> None:
    before = len(postfix.mail_from_params(legacy=False))
    probe(POSTFIX, "probe-postfix-8bit", port=mx_port, ca_file=ca_file, pipelined=True,
          body8=True)
    probe(POSTFIX, "probe-postfix-plain", port=mx_port, ca_file=ca_file, pipelined=False,
          body8=False)
    seen = eventually(lambda: postfix.mail_from_params(legacy=False)[before:][-2:]
                      if len(postfix.mail_from_params(legacy=False)) >= before + 2 else None,
                      what="Postfix's logged MAIL FROM commands")
    assert seen == [("probe@client.interop.test", "BODY=8BITMIME"),
                    ("probe@client.interop.test", "")], seen
