"""Live status on the local stack, two sender processes: each serves /healthz and
/status on loopback, writes its status record with its heartbeat into the senders
table on moto's server, `quiver status` aggregates both from the table alone, and
`quiver top` draws them in a pseudo-terminal, reacting to its keys."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stackrig import Running, enqueue, message, running_stack

pytestmark = pytest.mark.integration

DEADLINE = 120.0  # a bound on a stuck test, not a speed
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.3)


class Fleet:
    def __init__(self, running: Running, ports: list[int]) -> None:
        self.running = running
        self.ports = ports

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.running.stack.env(), "PYTHONPATH": str(ROOT)}

    def quiver(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "quiver", *args], env=self.env(),
                              capture_output=True, text=True, timeout=DEADLINE, check=False)

    def status_json(self) -> dict[str, Any]:
        done = self.quiver("status", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_stack(tmp_path_factory.mktemp("status"), start_sender=False) as running:
        stack = running.stack
        # Heartbeats (and so status records) every second instead of every ten.
        policy = stack.policy_variant("fast-heartbeat", lambda text: text.replace(
            "[intake]\n", '[intake]\nheartbeat = "1s"\n'))
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            stack.start_sender(name=f"sender-{i}", config=policy,
                               extra=["--status-port", str(port)])
        yield Fleet(running, ports)


def test_each_sender_serves_healthz_and_status(fleet: Fleet) -> None:
    for port in fleet.ports:
        _, body = until(lambda p=port: _healthy(p), f"/healthz 200 on {port}")
        assert body["healthy"] is True and body["loop_age"] < 30
    batch = []
    for i in range(30):
        to = [f"user{i}@alpha.test"] if i % 3 else [f"tempfail-{i}@alpha.test"]
        batch.append(message(i, to, prefix="status-live"))
    enqueue(fleet.running, batch)

    def alpha_rows() -> list[dict[str, Any]]:
        rows = []
        for port in fleet.ports:
            code, snap = fetch(port, "/status")
            assert code == 200, snap
            rows += [q for q in snap["queues"] if q["delivered"] or q["deferred"]]
        delivered = sum(q["delivered"] for q in rows)
        deferred = sum(q["deferred"] for q in rows)
        return rows if delivered >= 20 and deferred >= 10 else []

    rows = until(alpha_rows, "/status shows the deliveries and the deferrals")
    assert {q["state"] for q in rows} <= {"sending", "idle", "throttled", "backing off"}
    code, snap = fetch(fleet.ports[0], "/status")
    assert code == 200
    assert snap["v"] == 1 and snap["policy"]["version"] == 1
    assert len(snap["policy"]["digest"]) == 64
    # 1/2 with both senders counted; a heartbeat late on a busy machine reads as 1/1.
    assert snap["share"] in (0.5, 1.0)
    assert set(snap["inflight"]) == {"messages", "bytes", "jobs", "connections"}
    assert all(p["healthy"] for p in snap["proxies"])
    errors = [e for port in fleet.ports for e in fetch(port, "/status")[1]["last_errors"]]
    assert any(e["code"] == 451 and "temporary failure" in e["text"] for e in errors)


def _healthy(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        status, body = fetch(port, "/healthz")
    except OSError:
        return None  # not listening yet
    return (status, body) if status == 200 else None


def test_quiver_status_aggregates_both_senders_from_the_table(fleet: Fleet) -> None:
    def both() -> dict[str, Any] | None:
        view = fleet.status_json()
        deferred = sum(q["deferred"] for q in view["queues"])
        return view if len(view["tasks"]) == 2 and deferred >= 10 else None

    view = until(both, "two records in the senders table, with the deferrals")
    assert view["unreadable"] == {}
    # The aggregate is the sum of the tasks' own rows per (source, site).
    for row in view["queues"]:
        own = [q for t in view["tasks"] for q in t["queues"]
               if (q["source"], q["site"]) == (row["source"], row["site"])]
        assert row["tasks"] == len(own)
        for name in ("depth", "connections", "delivered", "deferred", "bounced"):
            assert row[name] == sum(q[name] for q in own)
    text = fleet.quiver("status")
    assert text.returncode == 0, text.stderr
    print(text.stdout)
    lines = text.stdout.splitlines()
    assert lines[0].startswith("2 live sender task(s)")
    assert any(line.split()[:3] == ["SOURCE", "SITE", "DEPTH"] for line in lines)
    site = view["queues"][0]["site"]
    assert any(site in line for line in lines if not line.startswith("SOURCE"))


def test_quiver_status_without_a_table_says_what_to_set(fleet: Fleet) -> None:
    env = {k: v for k, v in fleet.env().items() if k != "QUIVER_SENDERS_TABLE"}
    done = subprocess.run([sys.executable, "-m", "quiver", "status"], env=env,
                          capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2
    assert "no table: pass --table or set QUIVER_SENDERS_TABLE" in done.stderr


class Terminal:
    """`quiver top` on a pseudo-terminal: what it drew, and keys to type."""

    def __init__(self, fleet: Fleet, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quiver", "top", *args], env={
                **fleet.env(), "COLUMNS": "160", "LINES": "40"},
            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.screen = b""

    def read_until(self, check: Callable[[bytes], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not check(self.screen):
            assert time.monotonic() < deadline, f"never drew {what}: {self.screen[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    assert check(self.screen), f"exited before drawing {what}"
                    return

    def drain(self) -> None:
        """Read what is left until the child exits and closes the terminal."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.screen += chunk
            elif self.process.poll() is not None:
                return

    def type(self, key: bytes) -> None:
        os.write(self.master, key)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        os.close(self.master)


def last_frame(screen: bytes) -> str:
    return screen.rsplit(b"\x1b[H\x1b[2J", 1)[-1].decode("utf-8", "replace")


def test_quiver_top_draws_two_frames_and_stops(fleet: Fleet) -> None:
    until(lambda: len(fleet.status_json()["tasks"]) == 2, "two records")
    term = Terminal(fleet, "--iterations", "2", "--interval", "0.2")
    try:
        term.drain()
        assert term.process.wait(timeout=DEADLINE) == 0
    finally:
        term.close()
    frames = term.screen.count(b"\x1b[H\x1b[2J")
    assert frames == 2
    frame = last_frame(term.screen)
    print(frame)
    lines = frame.replace("\r", "").splitlines()
    assert lines[0].startswith("quiver top") and "sorted by depth" in lines[0]
    assert "2 live sender task(s)" in frame
    header = next(i for i, line in enumerate(lines) if line.startswith("SOURCE"))
    assert lines[header].split()[:3] == ["SOURCE", "SITE", "DEPTH"]
    rows = [line for line in lines[header + 1:] if line.strip()]
    assert rows and all(len(row.split()) >= 7 for row in rows if not row.startswith("..."))
    assert term.screen.endswith(b"\x1b[?25h\r\n")  # the cursor is given back


def test_quiver_top_sorts_by_deferral_rate_on_r_and_quits_on_q(fleet: Fleet) -> None:
    term = Terminal(fleet, "--interval", "60")
    try:
        term.read_until(lambda s: b"sorted by depth" in s and b"SOURCE" in s, "the first frame")
        term.type(b"r")
        term.read_until(lambda s: b"sorted by deferral rate" in s, "the re-sorted frame")
        term.type(b"q")
        assert term.process.wait(timeout=DEADLINE) == 0
    finally:
        term.close()


def test_the_readme_snippet_runs(fleet: Fleet) -> None:
    from test_readme import blocks

    (snippet,) = [b for b in blocks("sh") if "quiver status" in b]
    commands = [line.split("#", 1)[0].split() for line in snippet.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["quiver", "status"]] * 2 + [["quiver", "top"]]
    until(lambda: len(fleet.status_json()["tasks"]) == 2, "two records")
    for command in commands:
        done = fleet.quiver(*command[1:])
        assert done.returncode == 0, (command, done.stderr)
        assert "SOURCE" in done.stdout or '"queues"' in done.stdout


def test_a_sender_whose_status_port_is_taken_stops_at_once_saying_so(fleet: Fleet) -> None:
    stack = fleet.running.stack
    process = stack.start_sender(name="port-taken",
                                 extra=["--status-port", str(fleet.ports[0])])
    try:
        assert process.wait(timeout=DEADLINE) == 2
    finally:
        stack.stop_sender(process)
    log = (stack.root / "logs" / "port-taken.log").read_text()
    assert (f"quiver sender: cannot serve the status endpoint on 127.0.0.1:{fleet.ports[0]}: "
            "Address already in use (choose another --status-port, or 'off')") in log
