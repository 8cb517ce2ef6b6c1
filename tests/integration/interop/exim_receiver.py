"""A private Exim 4 daemon receiving mail for an interop domain, verifying DKIM itself.

Debian's exim4-daemon-light conflicts with the postfix package, so scripts/setup.sh
unpacks it (`apt-get download` + `dpkg -x`) under .interop/exim instead of
installing it; QUIVER_EXIM names another binary. The daemon runs in the
foreground (-bdf) with its own configuration (-C), spool, logs and maildir in one
temp directory, listening on its site's loopback address only.

Its own DKIM verifier checks every signature on arrival and logs the verdict
(`DKIM: d=... [verification succeeded]`, log_selector +dkim_verbose). It looks the
keys up in DNS through the C library's resolver, which reads /etc/resolv.conf and
only ever asks port 53: the daemon therefore runs in a private mount namespace
whose /etc/resolv.conf names the tests' own DNS server, on a loopback address at
port 53, serving the local stack's zone. Nothing else on the machine sees that.

The main log also shows, per accepted message, the TLS cipher (X=), whether the
client used PIPELINING (`L` used, `L-` offered and not used; with PIPE_CONNECT
offered a `.` follows the L) and the BODY= it declared (M8S=0/7/8).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from interop.receivers import (
    INTEROP_DIR,
    STOP_TIMEOUT,
    Copy,
    ReceiverUnavailable,
    Site,
    maildir_copies,
    private_workdir,
    remove_workdir,
    wait_for_banner,
)
from quiver.devstack.processes import stop_process

ENV_BINARY = "QUIVER_EXIM"
BINARY_PATHS = (INTEROP_DIR / "exim" / "usr" / "sbin" / "exim4", Path("/usr/sbin/exim4"))
# The Debian build's compiled-in Exim user; scripts/setup.sh creates it, as the
# exim4-base package's postinst would.
EXIM_USER = "Debian-exim"
UNKNOWN_PREFIX = "nouser-"
# Exim's default; the per-MX connection cap test lowers it.
DEFAULT_ACCEPT_MAX = 20

CONFIG = """\
# Written by the interop tests for one private daemon; removed afterwards.
primary_hostname = {hostname}
exim_path = {binary}
spool_directory = {workdir}/spool
log_file_path = {workdir}/log/%slog
pid_file_path = {workdir}/exim.pid
keep_environment =
local_interfaces = <; {ip}.{port}
domainlist local_domains = {domain}
tls_advertise_hosts = *
tls_certificate = {cert}
tls_privatekey = {key}
smtp_accept_max = {accept_max}
# The default (10) stops delivering after ten messages on one connection and only
# queues the rest for a queue runner this daemon does not have.
smtp_accept_queue_per_connection = 0
# No reverse lookups or ident queries of the (loopback) client.
host_lookup =
rfc1413_hosts =
log_selector = +dkim_verbose +pipelining +8bitmime +tls_cipher +smtp_connection \\
  +received_recipients +incoming_port
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  # Exim's stock refusals: "relay not permitted", "Unrouteable address".
  require message = relay not permitted
          domains = +local_domains
  require verify = recipient
  accept

begin routers
mailbox:
  driver = accept
  domains = +local_domains
  local_parts = !^{unknown}
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = {workdir}/mail
  maildir_format
  envelope_to_add
  return_path_add
  delivery_date_add
  user = {user}
"""

_ACCEPT = re.compile(r"^\S+ \S+ (?P<id>\S+) <= (?P<sender>\S*) (?P<rest>.*)$", re.MULTILINE)
_DKIM = re.compile(r"^\S+ \S+ (?P<id>\S+) DKIM: (?P<detail>.*)$", re.MULTILINE)
_MSGID = re.compile(r"\bid=(\S+)")
_TLS = re.compile(r"\bX=(\S+)")
_PIPELINING = re.compile(r"\bL(?P<early>[.*])?(?P<unused>-)?(?=\s)")
_BODY = re.compile(r"\bM8S=(\d)")


@dataclass(frozen=True)
class Accepted:
    """One `<=` line of Exim's main log: a message it accepted, and how."""

    exim_id: str
    message_id: str
    tls: str | None  # the X= field: protocol and cipher
    pipelining: bool | None  # None: PIPELINING was not offered/logged
    body: str | None  # M8S=: "0" no BODY=, "7" 7BIT, "8" 8BITMIME
    line: str


def find_binary() -> str | None:
    named = os.environ.get(ENV_BINARY)
    if named:
        return named if os.access(named, os.X_OK) else None
    return next((str(p) for p in BINARY_PATHS if os.access(p, os.X_OK)), None)


def unavailable_reason() -> str | None:
    if find_binary() is None:
        return ("Exim is not unpacked (scripts/setup.sh with QUIVER_WITH_INTEROP=1 fetches "
                "exim4-daemon-light into .interop/exim), nor named by QUIVER_EXIM")
    if os.geteuid() != 0:
        return "Exim's daemon and its private mount namespace need root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing: Exim's resolver needs a private /etc/resolv.conf"
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        return f"the {EXIM_USER} user is missing (scripts/setup.sh creates it)"
    return None


class EximReceiver:
    def __init__(self, *, site: Site, port: int, cert: Path, key: Path, nameserver: str,
                 accept_max: int = DEFAULT_ACCEPT_MAX) -> None:
        self.site = site
        self.port = port
        self.accept_max = accept_max
        self.nameserver = nameserver
        self.workdir = private_workdir("exim")
        self.mainlog = self.workdir / "log" / "mainlog"
        self._cert, self._key = cert, key
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> EximReceiver:
        reason = unavailable_reason()
        if reason is not None:
            raise ReceiverUnavailable(reason)
        found = find_binary()
        assert found is not None
        # Exim re-executes itself (exim_path) for each delivery, by then as its own
        # user, who may not be able to reach a binary inside a private checkout.
        binary = self.workdir / "exim4"
        shutil.copyfile(found, binary)
        binary.chmod(0o755)
        for name in ("spool", "log", "mail"):
            (self.workdir / name).mkdir()
            shutil.chown(self.workdir / name, user=EXIM_USER, group=EXIM_USER)
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        shutil.copyfile(self._cert, cert)
        shutil.copyfile(self._key, key)
        key.chmod(0o600)
        # Exim reads the key after it has dropped to its own user.
        shutil.chown(key, user=EXIM_USER, group=EXIM_USER)
        config = self.workdir / "exim.conf"
        config.write_text(CONFIG.format(
            hostname=self.site.mx, binary=binary, workdir=self.workdir, ip=self.site.ip,
            port=self.port, domain=self.site.domain, cert=cert, key=key,
            accept_max=self.accept_max, unknown=UNKNOWN_PREFIX, user=EXIM_USER,
        ))
        config.chmod(0o644)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {self.nameserver}\noptions timeout:2 attempts:2\n")
        resolv.chmod(0o644)
        output = (self.workdir / "daemon.out").open("wb")
        # sh runs inside the new mount namespace: $0 is the resolv.conf to bind over
        # the system's, "$@" the daemon's command line.
        self._process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
             'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
             str(binary), "-bdf", "-C", str(config)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        output.close()
        process = self._process
        try:
            wait_for_banner(self.site.ip, self.port, what="exim",
                            alive=lambda: process.poll() is None)
        except RuntimeError as error:
            out = (self.workdir / "daemon.out").read_text(errors="replace")[-2000:]
            self.stop()
            raise ReceiverUnavailable(f"{error}: {out}") from None
        return self

    def copies(self) -> list[Copy]:
        # envelope_to_add writes the envelope recipient as Envelope-to.
        return maildir_copies(self.workdir / "mail", rcpt_header="Envelope-to")

    def log_text(self) -> str:
        return self.mainlog.read_text(errors="replace") if self.mainlog.exists() else ""

    def accepted(self) -> list[Accepted]:
        out = []
        for m in _ACCEPT.finditer(self.log_text()):
            rest = m["rest"]
            msgid, tls = _MSGID.search(rest), _TLS.search(rest)
            pipe, body = _PIPELINING.search(rest), _BODY.search(rest)
            out.append(Accepted(
                exim_id=m["id"], message_id=msgid[1].strip("<>") if msgid else "",
                tls=tls[1] if tls else None,
                pipelining=None if pipe is None else not pipe["unused"],
                body=body[1] if body else None, line=m[0]))
        return out

    def dkim_verdicts(self) -> dict[str, list[str]]:
        """Exim's own DKIM log lines, by Exim message id."""
        out: dict[str, list[str]] = {}
        for m in _DKIM.finditer(self.log_text()):
            out.setdefault(m["id"], []).append(m["detail"])
        return out

    def refused_connections(self) -> int:
        """Connections refused at the greeting because smtp_accept_max was reached."""
        return self.log_text().count("refused: too many connections")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=STOP_TIMEOUT)
            self._process = None
        remove_workdir(self.workdir)
