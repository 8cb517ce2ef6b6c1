"""What the local MX received and who connected to it, kept on disk and in memory.

Files under the store directory:
- `received.jsonl`: one JSON object per accepted message, written and flushed
  before the server replies 250, so every acknowledged message is on disk.
- `rcpts.jsonl`: every RCPT TO with the reply it got, accepted or not, so a test
  can tell that an address was never tried.
- `messages/<n>.eml`: the message bytes as received, after un-dot-stuffing.
- `stats.json`: connection statistics per peer IP.
- `reports.jsonl`: every outcome of a report the script mails after accepting
  (`asyncbounce…` DSNs, `complain…` feedback reports): sent, retrying, failed,
  not_sent, cancelled; see `mx_report_sender`. A demo or test waits on it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _highest_message_number(messages_dir: Path) -> int:
    """Continue numbering after a previous run so its files are not overwritten."""
    highest = 0
    with os.scandir(messages_dir) as entries:
        for entry in entries:
            stem, _, ext = entry.name.partition(".")
            if ext == "eml" and stem.isdigit():
                highest = max(highest, int(stem))
    return highest


@dataclass
class _PeerStats:
    current: int = 0
    max_concurrent: int = 0
    connections: int = 0
    messages: int = 0


class MxStore:
    """What the server received and who connected; safe to read from another thread."""

    def __init__(self, store_dir: Path) -> None:
        self.dir = store_dir
        self.messages_dir = store_dir / "messages"
        self.messages_dir.mkdir(parents=True, exist_ok=True)
        self._next = _highest_message_number(self.messages_dir)
        self._log: IO[str] = (store_dir / "received.jsonl").open("a", encoding="utf-8")
        self._rcpt_log: IO[str] = (store_dir / "rcpts.jsonl").open("a", encoding="utf-8")
        self._report_log: IO[str] = (store_dir / "reports.jsonl").open("a", encoding="utf-8")
        self._records: list[dict[str, Any]] = []
        self._reports: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._total = _PeerStats()
        self._peers: dict[str, _PeerStats] = {}
        self._snapshots = 0

    def record(
        self,
        *,
        peer: tuple[str, int],
        helo: str | None,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        tls: str | None,
    ) -> int:
        self._next += 1
        number = self._next
        path = self.messages_dir / f"{number}.eml"
        path.write_bytes(content)
        record: dict[str, Any] = {
            "peer_ip": peer[0],
            "peer_port": peer[1],
            "helo": helo,
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "size": len(content),
            "tls": tls,
            "file": str(path),
            "at": _now(),
        }
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        with self._lock:
            self._records.append(record)
            self._total.messages += 1
            self._peers.setdefault(peer[0], _PeerStats()).messages += 1
        return number

    def rcpt_seen(self, address: str, reply: str) -> None:
        """One RCPT TO and the reply it got (rcpts.jsonl)."""
        self._rcpt_log.write(json.dumps({"rcpt": address, "reply": reply, "at": _now()}) + "\n")
        self._rcpt_log.flush()

    def report_outcome(self, entry: dict[str, Any]) -> None:
        """One outcome of a scripted report (reports.jsonl), flushed at once."""
        record = {**entry, "at": _now()}
        self._report_log.write(json.dumps(record) + "\n")
        self._report_log.flush()
        with self._lock:
            self._reports.append(record)

    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._reports]

    def connection_opened(self, ip: str) -> None:
        with self._lock:
            for s in (self._total, self._peers.setdefault(ip, _PeerStats())):
                s.current += 1
                s.connections += 1
                s.max_concurrent = max(s.max_concurrent, s.current)

    def connection_closed(self, ip: str) -> None:
        with self._lock:
            self._total.current -= 1
            self._peers[ip].current -= 1

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def stats(self) -> dict[str, Any]:
        """Totals at the top level, the same four counters per peer IP under `peers`."""
        with self._lock:
            return {
                **vars(self._total),
                "peers": {ip: dict(vars(s)) for ip, s in sorted(self._peers.items())},
            }

    def write_stats(self) -> Path:
        """Write stats.json atomically; `snapshot` counts writes, so a reader can wait for one."""
        self._snapshots += 1
        path = self.dir / "stats.json"
        tmp = path.with_name(f".stats.{os.getpid()}.tmp")
        body = {**self.stats(), "snapshot": self._snapshots, "written_at": _now()}
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self._log.close()
        self._rcpt_log.close()
        self._report_log.close()


def read_received(store_dir: Path) -> list[dict[str, Any]]:
    """The records in received.jsonl; a line still being written is skipped."""
    path = store_dir / "received.jsonl"
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


def read_rcpts(store_dir: Path) -> list[dict[str, Any]]:
    """Every RCPT TO the server was sent ({rcpt, reply, at}, rcpts.jsonl), in order."""
    path = store_dir / "rcpts.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def read_reports(store_dir: Path) -> list[dict[str, Any]]:
    """Every outcome of a scripted report (reports.jsonl), in order."""
    path = store_dir / "reports.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def read_stats(store_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((store_dir / "stats.json").read_text(encoding="utf-8"))
    return result
