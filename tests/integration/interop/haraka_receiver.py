"""A private Haraka 3 instance receiving mail for an interop domain.

Haraka is pinned by tests/integration/interop/haraka/package.json and its lock file;
scripts/setup.sh installs it there with `npm ci` (QUIVER_WITH_INTEROP=1). Each
instance is a Haraka "config root" in a temp directory: Haraka's stock config files,
then this instance's own: one process (nodes=0) listening on the site's loopback
address, the tls plugin with the local CA's certificate, and the quiver_store plugin
(haraka/quiver_store.js): it accepts the site's domain except local parts starting
with `nouser-` (those, like every other domain, get Haraka's stock "550 I cannot
deliver mail for <...>"), and writes each accepted message and its envelope to
files. Haraka logs to its stdout, which goes to a file; its stock limits stay as
they are (it folds DATA lines over 992 octets, which is what a long line meets in
the wild).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from interop.receivers import (
    HARAKA_DIR,
    STOP_TIMEOUT,
    Copy,
    ReceiverUnavailable,
    Site,
    private_workdir,
    remove_workdir,
    to_crlf,
    wait_for_banner,
)
from quiver.devstack.processes import stop_process

HARAKA_BIN = HARAKA_DIR / "node_modules" / "Haraka" / "bin" / "haraka"
STOCK_CONFIG = HARAKA_DIR / "node_modules" / "Haraka" / "config"
PLUGIN = HARAKA_DIR / "quiver_store.js"
UNKNOWN_PREFIX = "nouser-"


@dataclass(frozen=True)
class Stored:
    """One message Haraka accepted, with what the store plugin recorded about it."""

    copy: Copy
    mail_params: dict[str, str]
    tls: bool


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Debian package: nodejs)"
    if not HARAKA_BIN.exists():
        return ("Haraka is not installed (scripts/setup.sh with QUIVER_WITH_INTEROP=1 runs "
                f"npm ci in {HARAKA_DIR})")
    if shutil.which("openssl") is None:
        return "openssl is missing (Haraka's TLS wants Diffie-Hellman parameters)"
    return None


class HarakaReceiver:
    def __init__(self, *, site: Site, port: int, cert: Path, key: Path) -> None:
        self.site = site
        self.port = port
        self.workdir = private_workdir("haraka")
        self.store = self.workdir / "store"
        self.log = self.workdir / "haraka.log"
        self._cert, self._key = cert, key
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> HarakaReceiver:
        reason = unavailable_reason()
        if reason is not None:
            raise ReceiverUnavailable(reason)
        config = self.workdir / "config"
        shutil.copytree(STOCK_CONFIG, config)
        (self.workdir / "plugins").mkdir()
        shutil.copyfile(PLUGIN, self.workdir / "plugins" / "quiver_store.js")
        self.store.mkdir()
        (config / "smtp.ini").write_text(f"listen={self.site.ip}:{self.port}\nnodes=0\n")
        (config / "me").write_text(f"{self.site.mx}\n")
        (config / "host_list").write_text(f"{self.site.domain}\n")
        (config / "plugins").write_text("tls\nquiver_store\n")
        (config / "log.ini").write_text("[main]\nlevel=info\ntimestamps=true\n")
        (config / "quiver_store.ini").write_text(
            f"[main]\ndir={self.store}\nunknown_prefix={UNKNOWN_PREFIX}\n")
        shutil.copyfile(self._cert, config / "tls_cert.pem")
        shutil.copyfile(self._key, config / "tls_key.pem")
        # Haraka generates missing DH parameters with a plain `openssl dhparam 2048`,
        # which takes many seconds; DSA-style parameters are made in well under one.
        subprocess.run(["openssl", "dhparam", "-dsaparam", "-out",
                        str(config / "dhparams.pem"), "2048"],
                       check=True, capture_output=True, timeout=60)
        output = self.log.open("wb")
        self._process = subprocess.Popen(
            [shutil.which("node") or "node", str(HARAKA_BIN), "-c", str(self.workdir)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        output.close()
        process = self._process
        try:
            wait_for_banner(self.site.ip, self.port, what="haraka",
                            alive=lambda: process.poll() is None)
        except RuntimeError as error:
            tail = self.log_text()[-2000:]
            self.stop()
            raise ReceiverUnavailable(f"{error}: {tail}") from None
        return self

    def stored(self) -> list[Stored]:
        out = []
        for eml in sorted(self.store.glob("*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
            envelope = json.loads(eml.with_suffix(".json").read_text())
            copy = Copy(raw=to_crlf(eml.read_bytes()), rcpts=tuple(envelope["rcpt_to"]),
                        source=str(eml))
            params = {str(k).upper(): str(v) for k, v in envelope["mail_params"].items()}
            out.append(Stored(copy=copy, mail_params=params, tls=bool(envelope["tls"])))
        return out

    def copies(self) -> list[Copy]:
        return [s.copy for s in self.stored()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=STOP_TIMEOUT)
            self._process = None
        remove_workdir(self.workdir)
