"""A receiving MX on loopback that keeps what it receives.

The sender speaks real SMTP (STARTTLS included) to this server, so local runs
and integration tests exercise the production delivery path. Faults are
scripted by the recipient's local part (see `mx_script.BEHAVIOURS`).

Two ways to run it, with the same behaviour and the same files on disk:
in-process (`start_mx`, aiosmtpd on its own event loop in a thread) for
tests, or as a child process (`spawn_mx`, `python -m quiver.devstack.servers.mx`) so a
benchmark keeps the receiving side off the sender's CPU.

What is kept on disk (received.jsonl, rcpts.jsonl, messages/<n>.eml, stats.json,
reports.jsonl) is described in `mx_store`; the SMTP server itself is `mx_server`.

After accepting, the MX can act as a mailbox provider does later: recipients scripted
`asyncbounce…` get a DSN mailed to the sender's return path, `complain…` a signed
feedback report mailed to the FBL address. Both go to the `report_relay` (see
`MxConfig` and `mx_report_sender`); without one they are only accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quiver.devstack.loop_thread import LoopThread
from quiver.devstack.processes import child_process_options, stop_process
from quiver.devstack.servers.mx_report_sender import check_relay, load_reporter
from quiver.devstack.servers.mx_server import (
    DEFAULT_HOSTNAME,
    DEFAULT_MAX_RCPTS_PER_TXN,
    DEFAULT_TARPIT_SECONDS,
    Gate,
    MxConfig,
    MxEngine,
)
from quiver.devstack.servers.mx_store import read_rcpts, read_received, read_reports, read_stats

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
READY_PREFIX = "ready "


class MxServer:
    """The MX in this process: aiosmtpd on its own event loop in a daemon thread."""

    def __init__(self, config: MxConfig, *, gate: Gate | None = None) -> None:
        self.config = config
        self._engine = MxEngine(config, gate=gate)
        self._thread = LoopThread("quiver-local-mx")
        self._stopped = False
        try:
            self.address: tuple[str, int] = self._thread.run(
                self._engine.start(), timeout=READY_TIMEOUT)
        except BaseException:
            self._thread.halt(timeout=STOP_TIMEOUT)
            self._engine.store.close()
            raise

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._thread.run(self._engine.stop(), timeout=STOP_TIMEOUT)
        self._thread.halt(timeout=STOP_TIMEOUT)

    def received(self) -> list[dict[str, Any]]:
        return self._engine.store.received()

    def rcpts(self) -> list[dict[str, Any]]:
        return read_rcpts(self.config.store_dir)

    def stats(self) -> dict[str, Any]:
        return self._engine.store.stats()

    def reports(self) -> list[dict[str, Any]]:
        """Every outcome of a scripted report so far (reports.jsonl), in order."""
        return self._engine.store.reports()

    def __enter__(self) -> MxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mx(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    store_dir: Path,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    offer_starttls: bool = True,
    offer_pipelining: bool = True,
    hostname: str = DEFAULT_HOSTNAME,
    tarpit_seconds: float = DEFAULT_TARPIT_SECONDS,
    max_rcpts_per_txn: int = DEFAULT_MAX_RCPTS_PER_TXN,
    busy_every: int = 0,
    report_relay: tuple[str, int] | None = None,
    fbl_address: str | None = None,
    reporter_domain: str | None = None,
    reporter_address: str | None = None,
    reporter_selector: str | None = None,
    reporter_key_file: Path | None = None,
) -> MxServer:
    """Start the MX in this process; it listens when this returns.

    STARTTLS is offered when a cert and key are given, unless offer_starttls is False;
    PIPELINING unless offer_pipelining is False (aiosmtpd serves pipelined commands
    either way; the flag only changes what EHLO says, so clients take either path).
    Port 0 picks a free port (see `.address`). The listener on 127.0.0.1 accepts
    connections from any 127.x source address. `busy_every` > 0 greets only every
    n-th connection and turns the others away with a 421.

    `report_relay` (a loopback HOST, PORT) receives the DSNs of `asyncbounce…`
    recipients and the feedback reports of `complain…` ones, the latter addressed to
    `fbl_address` from the `reporter_*` settings; see `MxConfig` for each.
    """
    return MxServer(MxConfig(
        store_dir=store_dir, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
        offer_starttls=offer_starttls, offer_pipelining=offer_pipelining, hostname=hostname,
        tarpit_seconds=tarpit_seconds, max_rcpts_per_txn=max_rcpts_per_txn,
        busy_every=busy_every, report_relay=report_relay, fbl_address=fbl_address,
        reporter_domain=reporter_domain, reporter_address=reporter_address,
        reporter_selector=reporter_selector, reporter_key_file=reporter_key_file,
    ))


class MxProcess:
    """The MX as a child process (`python -m quiver.devstack.servers.mx`)."""

    def __init__(self, process: subprocess.Popen[str], address: tuple[str, int], store_dir: Path):
        self.process = process
        self.address = address
        self.store_dir = store_dir

    def stop(self) -> None:
        """SIGTERM, wait for the exit (stats.json is written on the way out)."""
        stop_process(self.process, timeout=STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def received(self) -> list[dict[str, Any]]:
        return read_received(self.store_dir)

    def rcpts(self) -> list[dict[str, Any]]:
        """Every RCPT TO it was sent, with its reply (accepted or not)."""
        return read_rcpts(self.store_dir)

    def reports(self) -> list[dict[str, Any]]:
        """Every outcome of a scripted report so far (reports.jsonl), in order."""
        return read_reports(self.store_dir)

    def stats(self) -> dict[str, Any]:
        """Current statistics: asks a running child for a fresh stats.json (SIGUSR1)."""
        if self.process.poll() is not None:
            return read_stats(self.store_dir)
        try:
            before = read_stats(self.store_dir).get("snapshot", 0)
        except (OSError, ValueError):
            before = 0
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                stats = read_stats(self.store_dir)
                if stats.get("snapshot", 0) > before:
                    return stats
            time.sleep(0.02)
        raise TimeoutError(f"the MX child did not write {self.store_dir / 'stats.json'}")

    def __enter__(self) -> MxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _command(config: MxConfig) -> list[str]:
    cmd = [
        sys.executable, "-m", "quiver.devstack.servers.mx",
        "--listen", f"{config.host}:{config.port}",
        "--store", str(config.store_dir),
        "--hostname", config.hostname,
        "--tarpit-seconds", str(config.tarpit_seconds),
        "--max-rcpts-per-txn", str(config.max_rcpts_per_txn),
    ]
    if config.tls_cert is not None and config.tls_key is not None:
        cmd += ["--tls-cert", str(config.tls_cert), "--tls-key", str(config.tls_key)]
    if not config.offer_starttls:
        cmd.append("--no-starttls")
    if not config.offer_pipelining:
        cmd.append("--no-pipelining")
    if config.report_relay is not None:
        cmd += ["--report-relay", f"{config.report_relay[0]}:{config.report_relay[1]}"]
    options: list[tuple[str, str | Path | None]] = [
        ("--fbl-address", config.fbl_address),
        ("--reporter-domain", config.reporter_domain),
        ("--reporter-address", config.reporter_address),
        ("--reporter-selector", config.reporter_selector),
        ("--reporter-key-file", config.reporter_key_file),
    ]
    for flag, value in options:
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def spawn_mx(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    store_dir: Path,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    offer_starttls: bool = True,
    offer_pipelining: bool = True,
    hostname: str = DEFAULT_HOSTNAME,
    tarpit_seconds: float = DEFAULT_TARPIT_SECONDS,
    max_rcpts_per_txn: int = DEFAULT_MAX_RCPTS_PER_TXN,
    report_relay: tuple[str, int] | None = None,
    fbl_address: str | None = None,
    reporter_domain: str | None = None,
    reporter_address: str | None = None,
    reporter_selector: str | None = None,
    reporter_key_file: Path | None = None,
) -> MxProcess:
    """Start the MX as a child process and wait for its ready line; stderr goes to mx.log.

    The report settings are those of `start_mx`."""
    config = MxConfig(
        store_dir=store_dir, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
        offer_starttls=offer_starttls, offer_pipelining=offer_pipelining, hostname=hostname,
        tarpit_seconds=tarpit_seconds, max_rcpts_per_txn=max_rcpts_per_txn,
        report_relay=report_relay, fbl_address=fbl_address,
        reporter_domain=reporter_domain, reporter_address=reporter_address,
        reporter_selector=reporter_selector, reporter_key_file=reporter_key_file,
    )
    store_dir.mkdir(parents=True, exist_ok=True)
    # The directory holding the `quiver` package (not the package itself: on the path,
    # its subpackages would shadow top-level modules such as dkimpy's `dkim`).
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
    )}
    log_path = store_dir / "mx.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _command(config), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            text=True, env=env, **child_process_options(),
        )
    assert process.stdout is not None
    line = ""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout=READY_TIMEOUT):
            line = process.stdout.readline().strip()
    if not line.startswith(READY_PREFIX):
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)
        raise RuntimeError(
            f"the local MX did not start (got {line!r}); see {log_path}"
        )
    listen_host, _, listen_port = line.removeprefix(READY_PREFIX).rpartition(":")
    return MxProcess(process, (listen_host, int(listen_port)), store_dir)


async def _serve_until_signalled(config: MxConfig) -> int:
    engine = MxEngine(config)
    host, port = await engine.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    loop.add_signal_handler(signal.SIGUSR1, engine.store.write_stats)
    print(f"{READY_PREFIX}{host}:{port}", flush=True)
    await done.wait()
    await engine.stop()
    return 0


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quiver.devstack.servers.mx",
        description="Local receiving MX (keeps what it receives).",
    )
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 2525),
                        help="HOST:PORT (port 0 picks a free one; see the ready line)")
    parser.add_argument("--store", type=Path, required=True, help="directory for what is received")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--no-starttls", action="store_true", help="do not offer STARTTLS")
    parser.add_argument("--no-pipelining", action="store_true", help="do not offer PIPELINING")
    parser.add_argument("--hostname", default=DEFAULT_HOSTNAME)
    parser.add_argument("--tarpit-seconds", type=float, default=DEFAULT_TARPIT_SECONDS)
    parser.add_argument("--max-rcpts-per-txn", type=int, default=DEFAULT_MAX_RCPTS_PER_TXN)
    reports = parser.add_argument_group(
        "reports after accepting",
        "asyncbounce… recipients get a DSN sent to the MAIL FROM, complain… ones a feedback "
        "report sent to --fbl-address; both through --report-relay.")
    reports.add_argument("--report-relay", type=_host_port, metavar="HOST:PORT",
                         help="loopback SMTP server standing in for the bounce domain's MX "
                              "and SES inbound (without it, reports are not sent)")
    reports.add_argument("--fbl-address", help="where feedback reports are addressed")
    reports.add_argument("--reporter-domain", help="the reporting provider's domain")
    reports.add_argument("--reporter-address",
                         help="From of feedback reports (default fbl@REPORTER_DOMAIN)")
    reports.add_argument("--reporter-selector", help="DKIM selector of the reporter's key")
    reports.add_argument("--reporter-key-file", type=Path,
                         help="PEM RSA key that signs feedback reports (with --reporter-selector)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if (args.reporter_selector is None) != (args.reporter_key_file is None):
        parser.error("--reporter-selector and --reporter-key-file go together")
    try:
        check_relay(args.report_relay)
        load_reporter(domain=args.reporter_domain, address=args.reporter_address,
                      selector=args.reporter_selector, key_file=args.reporter_key_file)
    except ValueError as exc:
        parser.error(str(exc))
    # aiosmtpd logs every command at INFO; at benchmark rates that is the main cost.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    host, port = args.listen
    config = MxConfig(
        store_dir=args.store, host=host, port=port, tls_cert=args.tls_cert,
        tls_key=args.tls_key, offer_starttls=not args.no_starttls,
        offer_pipelining=not args.no_pipelining, hostname=args.hostname,
        tarpit_seconds=args.tarpit_seconds, max_rcpts_per_txn=args.max_rcpts_per_txn,
        report_relay=args.report_relay, fbl_address=args.fbl_address,
        reporter_domain=args.reporter_domain, reporter_address=args.reporter_address,
        reporter_selector=args.reporter_selector, reporter_key_file=args.reporter_key_file,
    )
    config.store_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_serve_until_signalled(config))


if __name__ == "__main__":
    sys.exit(main())
