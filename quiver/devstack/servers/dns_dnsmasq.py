"""dnsmasq as the local DNS server, when installed and able to express the zone.

A real, separately implemented DNS server keeps the builtin responder honest:
the sender's resolver gets the same answers from both. dnsmasq is started
with every record on its command line and `--local=/#/`, so it answers only
from that data (NXDOMAIN for anything else) and forwards nothing anywhere.

What its command line cannot say, `zone_args` refuses with the reason, and
`start_dns` then uses the builtin responder instead:
- per-record TTLs on MX and TXT (one `--local-ttl` applies to all of them);
- TXT character-strings that are empty, contain a comma (the separator on the
  command line), or bytes outside printable ASCII;
- a zone with PTR records in which some A/AAAA address has none: `--host-record`
  also answers the address's PTR, and only an explicit `--ptr-record` for that
  address replaces that answer (so a reverse record the zone leaves out on purpose
  would be served anyway).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from quiver.devstack.processes import child_process_options, free_port, stop_process
from quiver.devstack.servers.dns_builtin import wait_until_answering
from quiver.devstack.servers.dns_zone import DEFAULT_TTL, Mx, Zone, reverse_name

DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/usr/local/sbin/dnsmasq")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5


class ZoneNotExpressible(ValueError):
    """dnsmasq's command line cannot carry this zone exactly."""


class DnsmasqFailed(RuntimeError):
    """dnsmasq is installed but did not start answering."""


def dnsmasq_binary() -> str | None:
    found = shutil.which("dnsmasq")
    if found:
        return found
    return next((p for p in DNSMASQ_PATHS if os.access(p, os.X_OK)), None)


def _txt_string_ok(data: bytes) -> bool:
    return bool(data) and b"," not in data and all(0x20 <= b < 0x7F for b in data) and (
        data == data.strip()
    )


def zone_args(zone: Zone) -> list[str]:
    """dnsmasq options serving exactly this zone; ZoneNotExpressible if it cannot."""
    shared_ttls = {r.ttl for r in zone if r.type in ("MX", "TXT", "PTR")}
    if len(shared_ttls) > 1:
        raise ZoneNotExpressible(
            f"MX, TXT and PTR records have different TTLs {sorted(shared_ttls)}; "
            "dnsmasq has one --local-ttl for all of them"
        )
    args = [f"--local-ttl={shared_ttls.pop() if shared_ttls else DEFAULT_TTL}"]
    reverse = {r.name for r in zone if r.type == "PTR"}
    if reverse:
        unreversed = sorted(
            r.value for r in zone if r.type in ("A", "AAAA") and isinstance(r.value, str)
            and reverse_name(r.value) not in reverse
        )
        if unreversed:
            raise ZoneNotExpressible(
                f"address {unreversed[0]} has no PTR in a zone that has PTR records; "
                "dnsmasq's --host-record would answer one for it"
            )
    for record in zone:
        if record.type == "PTR":
            args.append(f"--ptr-record={record.name},{record.value}")
        elif isinstance(record.value, Mx):
            exchange = record.value.exchange or "."
            args.append(f"--mx-host={record.name},{exchange},{record.value.preference}")
        elif isinstance(record.value, str):
            args.append(f"--host-record={record.name},{record.value},{record.ttl}")
        else:
            bad = [s for s in record.value if not _txt_string_ok(s)]
            if bad:
                raise ZoneNotExpressible(
                    f"TXT at {record.name} has a character-string dnsmasq's command line "
                    f"cannot carry exactly ({bad[0][:40]!r}: empty, a comma, edge spaces, "
                    "or non-printable bytes)"
                )
            args.append(f"--txt-record={record.name}," + ",".join(s.decode() for s in record.value))
    return args


class DnsmasqServer:
    """A dnsmasq child process serving a zone; its files live in a private temp dir."""

    def __init__(self, zone: Zone, *, host: str = "127.0.0.1", port: int = 0,
                 binary: str | None = None) -> None:
        self.kind: Literal["dnsmasq", "builtin"] = "dnsmasq"
        self.fallback_reason: str | None = None
        found = binary or dnsmasq_binary()
        if found is None:
            raise FileNotFoundError("dnsmasq is not installed")
        records = zone_args(zone)
        self.workdir = Path(tempfile.mkdtemp(prefix="quiver-dnsmasq-"))
        self.log_path = self.workdir / "dnsmasq.log"
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self._start(found, records, host, port)
        except BaseException:
            self.stop()
            raise

    def _command(self, binary: str, records: list[str], host: str, port: int) -> list[str]:
        # As root dnsmasq would drop to "nobody"; staying root keeps the pid file and
        # log in our temp dir writable. It only ever binds a loopback address.
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [
            binary, "--keep-in-foreground", "--no-resolv", "--no-hosts",
            "--conf-file=/dev/null", f"--port={port}", f"--listen-address={host}",
            "--bind-interfaces", "--local=/#/", f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            "--log-facility=-", *user, *records,
        ]

    def _start(self, binary: str, records: list[str], host: str, port: int) -> None:
        for _ in range(PORT_ATTEMPTS if port == 0 else 1):
            chosen = port or free_port(host, protocols="tcp+udp")
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self._command(binary, records, host, chosen),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    **child_process_options(),
                )
            self.address: tuple[str, int] = (host, chosen)
            if wait_until_answering(self.address, timeout=START_TIMEOUT,
                                    alive=self._alive):
                return
            self._terminate()
            log_text = self.log_path.read_text(errors="replace")
            if port == 0 and "in use" in log_text:
                continue  # another process took the port between probe and bind
            break
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        raise DnsmasqFailed(f"dnsmasq did not start answering; its log says:\n{tail}")

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        self._terminate()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.workdir)

    def __enter__(self) -> DnsmasqServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DnsmasqFailed", "DnsmasqServer", "ZoneNotExpressible", "dnsmasq_binary", "zone_args"]
