"""What the interop receivers share: where each lives, the copies it kept, how it starts.

Each receiving MTA (Postfix, Exim, Haraka) runs as its own private instance on its
own loopback address, all on one port (the policy's delivery port), with a
certificate from the local stack's CA so the sender verifies it as in production.
Its MX hostname and domains are in the local stack's DNS zone, so the sender finds
it by MX lookup. A receiver keeps every accepted message where the test can read
it (`copies()`) and writes a log the test can read (`log_text()`).

A receiver that cannot run here raises `ReceiverUnavailable` with the reason and
what to install; `interop_required()` says whether that is a failure (the project's
test command sets QUIVER_WITH_INTEROP=1 after installing them) or a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[3]
# Where scripts/setup.sh unpacks the receivers that are not installed system-wide.
INTEROP_DIR = REPO / ".interop"
HARAKA_DIR = Path(__file__).resolve().parent / "haraka"
# scripts/test.sh sets it after scripts/setup.sh installed every receiver: there a
# receiver that does not start is a failure, not a skip.
REQUIRED_ENV = "QUIVER_WITH_INTEROP"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ReceiverUnavailable(RuntimeError):
    """This receiver cannot run on this machine; the text says why and what to install."""


def interop_required() -> bool:
    """True where every receiver must run: QUIVER_WITH_INTEROP=1, or a run that allows
    no skips (QUIVER_REQUIRE_ALL, else CI, truthy)."""
    if os.environ.get(REQUIRED_ENV, "").strip() == "1":
        return True
    strict = os.environ.get("QUIVER_REQUIRE_ALL") or os.environ.get("CI") or ""
    return strict.strip().lower() in ("1", "true", "yes", "on")


def unavailable(reason: str) -> NoReturn:
    """Fail where the receivers must run, else skip with the reason."""
    if interop_required():
        pytest.fail(f"interop receiver unavailable (QUIVER_WITH_INTEROP=1 or CI): {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Site:
    """One receiver's place in DNS: its domain, MX host and loopback address."""

    name: str
    domain: str
    mx: str
    ip: str

    @property
    def relay_domain(self) -> str:
        """A domain whose MX is this receiver but which it does not accept mail for."""
        return f"elsewhere.{self.domain}"


@dataclass(frozen=True)
class Copy:
    """One message as a receiver stored it."""

    raw: bytes  # CRLF line ends
    rcpts: tuple[str, ...]
    source: str  # the file it came from, for failure messages

    @property
    def message_id(self) -> str:
        value = BytesHeaderParser().parsebytes(self.raw).get("Message-ID", "")
        return str(value).strip().strip("<>")


def to_crlf(data: bytes) -> bytes:
    """Stored copies end lines with LF (maildir) or CRLF (Haraka); DKIM needs CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def private_workdir(prefix: str) -> Path:
    """A fresh directory the receiver's unprivileged processes can traverse.

    pytest's own temp dirs are private to root; Postfix and Exim drop privileges
    and must reach their queue, spool, logs and config.
    """
    path = Path(tempfile.mkdtemp(prefix=f"quiver-interop-{prefix}-"))
    path.chmod(0o755)
    return path


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def wait_for_banner(ip: str, port: int, *, timeout: float = START_TIMEOUT,
                    alive: Callable[[], bool] = lambda: True, what: str) -> None:
    """Wait until an SMTP server on ip:port sends its 220 greeting."""
    deadline = time.monotonic() + timeout
    last = "nothing answered"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before it answered on {ip}:{port}")
        try:
            with socket.create_connection((ip, port), timeout=5) as sock:
                banner = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                if banner.startswith(b"220"):
                    return
                last = f"greeting {banner[:80]!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not greet on {ip}:{port} within {timeout:.0f} s ({last})")


def maildir_copies(directory: Path, *, rcpt_header: str) -> list[Copy]:
    """Messages delivered into a maildir, oldest first; recipients from `rcpt_header`."""
    new = directory / "new"
    if not new.is_dir():
        return []
    out = []
    for path in sorted(new.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        raw = to_crlf(path.read_bytes())
        headers = BytesHeaderParser().parsebytes(raw)
        rcpts = tuple(str(v).strip() for v in headers.get_all(rcpt_header, []))
        out.append(Copy(raw=raw, rcpts=rcpts, source=str(path)))
    return out
