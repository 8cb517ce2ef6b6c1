"""A private Postfix instance that accepts mail, fails to deliver it and sends its own
DSNs to the envelope sender: real RFC 3464 reports for the bounce parser.

`postfix -c DIR` with its own main.cf and master.cf (as postfix_receiver.py runs its
receiver), everything in one temp directory. One smtpd on loopback takes mail for
DSN_DOMAIN from anyone on loopback without checking recipients at RCPT time
(smtpd_reject_unlisted_recipient = no), so failures surface at delivery:

    unknown local part   virtual(8): "User unknown in virtual mailbox table" (5.1.1)
    FULL_USER            an mbox over virtual_mailbox_limit: "File too large" (5.2.2)
    OK_USER              delivered to a maildir

Bounces go to the envelope sender's domain, BOUNCE_DOMAIN, which transport(5) routes
to the sink on loopback (smtp:[127.0.0.1]:port). Postfix needs root to start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from interop.postfix_receiver import DAEMONS, MAIL_UID, unavailable_reason
from interop.receivers import ReceiverUnavailable, private_workdir, remove_workdir, wait_for_banner

DSN_DOMAIN = "dsn.interop.test"
BOUNCE_DOMAIN = "bounces.sender.interop.test"
OK_USER = "ok"
FULL_USER = "full"
# An mbox holds at most this many bytes (Postfix insists it be no smaller than the
# message size limit). FULL_USER's mbox starts FULL_PREFILL bytes long, so appending
# any message overflows it: virtual(8) gets EFBIG and reports a full mailbox (5.2.2).
MAILBOX_LIMIT = 20480
FULL_PREFILL = MAILBOX_LIMIT - 100

MAIN_CF = """\
# Written by the interop tests for one private instance; removed afterwards.
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
command_directory = {command_dir}
daemon_directory = {daemons}
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# Accept every local part at RCPT time: the failures must happen at delivery, where
# Postfix reports them in a DSN rather than in its SMTP reply.
smtpd_reject_unlisted_recipient = no
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{etc}/mailboxes
virtual_mailbox_limit = {limit}
message_size_limit = {limit}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
# Bounces to the sender's bounce domain go to the sink; nothing else leaves.
transport_maps = texthash:{etc}/transport
default_transport = error:no outbound mail from this instance
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_host_lookup = native
maillog_file_prefixes = {workdir}
maillog_file = {log}
biff = no
# Fail at once rather than after queue_run_delay: a test waits on the DSN.
queue_run_delay = 1s
minimal_backoff_time = 1s
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixBouncer:
    def __init__(self, *, port: int, sink_port: int) -> None:
        self.port = port
        self.sink_port = sink_port
        self.workdir = private_workdir("postfix-dsn")
        self.etc = self.workdir / "etc"
        self.log = self.workdir / "maillog"
        self._postfix = shutil.which("postfix") or "postfix"
        self._started = False

    def start(self) -> PostfixBouncer:
        reason = unavailable_reason()
        if reason is not None:
            raise ReceiverUnavailable(reason)
        queue, data, mail = self.workdir / "queue", self.workdir / "data", self.workdir / "mail"
        for d in (self.etc, queue, data, mail):
            d.mkdir()
        shutil.chown(data, user="postfix")
        os.chown(mail, MAIL_UID, MAIL_UID)
        mbox = mail / FULL_USER
        mbox.write_bytes(b"From old@example.test  Thu Jan  1 00:00:00 2026\n\n"
                         + b"x" * (FULL_PREFILL - 50) + b"\n\n")
        os.chown(mbox, MAIL_UID, MAIL_UID)
        (self.etc / "main.cf").write_text(MAIN_CF.format(
            etc=self.etc, queue=queue, data=data, mail=mail, workdir=self.workdir,
            command_dir=Path(self._postfix).parent, daemons=DAEMONS, log=self.log,
            domain=DSN_DOMAIN, uid=MAIL_UID, limit=MAILBOX_LIMIT,
        ))
        # Maildir for OK_USER (trailing slash), mbox for FULL_USER (the limit applies).
        (self.etc / "mailboxes").write_text(
            f"{OK_USER}@{DSN_DOMAIN} {OK_USER}/\n{FULL_USER}@{DSN_DOMAIN} {FULL_USER}\n")
        (self.etc / "transport").write_text(
            f"{BOUNCE_DOMAIN} smtp:[127.0.0.1]:{self.sink_port}\n")
        (self.etc / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self._started = True
        self._run("start")
        wait_for_banner("127.0.0.1", self.port, what="postfix smtpd (DSN source)")
        return self

    def _run(self, action: str) -> None:
        done = subprocess.run([self._postfix, "-c", str(self.etc), action],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"postfix {action} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}\n{self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self._started:
            self._started = False
            pid_file = self.workdir / "queue" / "pid" / "master.pid"
            pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
                self._run("stop")
            deadline = time.monotonic() + 15
            while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        remove_workdir(self.workdir)
