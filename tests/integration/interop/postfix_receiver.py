"""A private Postfix instance receiving mail for two interop domains.

`postfix -c DIR` with its own main.cf and master.cf (as bench/postfix_peer.py runs
its peer): queue, data, maildir and log live in one temp directory, nothing
touches a system Postfix. Two smtpd listeners share the instance:

    site.ip:port         the ordinary one: STARTTLS, 8BITMIME, PIPELINING offered
    legacy.ip:port       the same with 8BITMIME withdrawn
                         (smtpd_discard_ehlo_keywords = 8bitmime)

Both accept any local part of their domain into one maildir (virtual(8)), refuse
local parts starting with `nouser-` (User unknown) and relay for no one. smtpd's
peer debug logging records every command, so the log shows each MAIL FROM's
parameters (BODY=8BITMIME). Postfix needs root to start; it drops privileges itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from interop.receivers import (
    Copy,
    ReceiverUnavailable,
    Site,
    maildir_copies,
    private_workdir,
    remove_workdir,
    wait_for_banner,
)

DAEMONS = Path("/usr/lib/postfix/sbin")
UNKNOWN_PREFIX = "nouser-"
# virtual(8) delivers as this uid; maildirs are created by it.
MAIL_UID = 65534

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
myhostname = {hostname}
mydomain = {domain}
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP
# No local delivery, no aliases: mail for the two domains goes to one maildir.
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
# The listeners name their own addresses in master.cf; inet_interfaces only says
# which addresses are this host's, and Postfix insists they be configured ones.
inet_interfaces = loopback-only
inet_protocols = ipv4
# Nobody relays, not even loopback clients (the sender leaves from 127.0.0.x).
smtpd_relay_restrictions = reject_unauth_destination
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = regexp:{etc}/mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
smtpd_peername_lookup = no
disable_dns_lookups = yes
maillog_file_prefixes = {workdir}
maillog_file = {log}
biff = no
# Log every SMTP command and reply (the MAIL FROM parameters among them).
debug_peer_list = 0.0.0.0/0
debug_peer_level = 1
"""

MAILBOXES = f"""\
if !/^{UNKNOWN_PREFIX}/
/^[^@]+@/\tmailbox/
endif
"""

MASTER_CF = """\
{ip}:{port} inet n - n - - smtpd
{legacy_ip}:{port} inet n - n - - smtpd
  -o smtpd_discard_ehlo_keywords=8bitmime -o syslog_name=postfix-legacy
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
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

_MAIL_FROM = re.compile(
    r"postfix(?P<legacy>-legacy)?/smtpd\[\d+\]: < \S+: mail FROM:<(?P<from>[^>]*)>(?P<params>.*)$",
    re.IGNORECASE | re.MULTILINE)


def unavailable_reason() -> str | None:
    if shutil.which("postfix") is None or not (DAEMONS / "master").exists():
        return "Postfix is not installed (Debian package: postfix; scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "starting a private Postfix instance needs root"
    return None


class PostfixReceiver:
    def __init__(self, *, site: Site, legacy: Site, port: int, cert: Path, key: Path) -> None:
        self.site = site
        self.legacy = legacy
        self.port = port
        self.workdir = private_workdir("postfix")
        self.etc = self.workdir / "etc"
        self.maildir = self.workdir / "mail" / "mailbox"
        self.log = self.workdir / "maillog"
        self._cert, self._key = cert, key
        self._postfix = shutil.which("postfix") or "postfix"
        self._started = False

    def start(self) -> PostfixReceiver:
        reason = unavailable_reason()
        if reason is not None:
            raise ReceiverUnavailable(reason)
        queue, data, mail = self.workdir / "queue", self.workdir / "data", self.workdir / "mail"
        for d in (self.etc, queue, data, mail):
            d.mkdir()
        shutil.chown(data, user="postfix")
        os.chown(mail, MAIL_UID, MAIL_UID)
        cert, key = self.etc / "cert.pem", self.etc / "key.pem"
        shutil.copyfile(self._cert, cert)
        shutil.copyfile(self._key, key)
        key.chmod(0o600)
        (self.etc / "main.cf").write_text(MAIN_CF.format(
            etc=self.etc, queue=queue, data=data, mail=mail, workdir=self.workdir,
            command_dir=Path(self._postfix).parent, daemons=DAEMONS, log=self.log,
            hostname=self.site.mx, domain=self.site.domain,
            domains=f"{self.site.domain}, {self.legacy.domain}", uid=MAIL_UID,
            cert=cert, key=key,
        ))
        (self.etc / "mailboxes").write_text(MAILBOXES)
        (self.etc / "master.cf").write_text(MASTER_CF.format(
            ip=self.site.ip, legacy_ip=self.legacy.ip, port=self.port))
        self._started = True
        self._run("start")
        for ip in (self.site.ip, self.legacy.ip):
            wait_for_banner(ip, self.port, what="postfix smtpd")
        return self

    def _run(self, action: str) -> None:
        done = subprocess.run([self._postfix, "-c", str(self.etc), action],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"postfix {action} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}\n{log}")

    def copies(self) -> list[Copy]:
        # virtual(8) records the envelope recipient as Delivered-To.
        return maildir_copies(self.maildir, rcpt_header="Delivered-To")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def mail_from_params(self, *, legacy: bool) -> list[tuple[str, str]]:
        """(reverse-path, parameters) of every MAIL FROM one listener received."""
        return [(m["from"], m["params"].strip()) for m in _MAIL_FROM.finditer(self.log_text())
                if bool(m["legacy"]) == legacy]

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
