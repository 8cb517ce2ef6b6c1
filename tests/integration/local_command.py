"""`quiver local` as a user runs it: a child process whose output is read as it comes,
and the processes it starts, found through /proc so a test can see that none is left."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OutputReader:
    """Collects a process's output lines on a thread; waits on them without polling."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], *, timeout: float) -> str:
        """The first line matching `predicate`; AssertionError with the output if the
        process ends first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise AssertionError("not in the output:\n" + self.text())
                self._changed.wait(left)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if it is
    gone or a zombie: with the pid, it names one process even if the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below `pid`."""
    found: set[tuple[int, int]] = set()
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                started = start_time(child)
                if started is not None and (child, started) not in found:
                    found.add((child, started))
                    stack.append(child)
    return found


def still_running(processes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {(pid, started) for pid, started in processes if start_time(pid) == started}


def read_env_file(path: Path) -> dict[str, str]:
    """The variables an env.sh of `export K=V` lines sets."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        key, _, value = words[1].partition("=")
        env[key] = value
    return env


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.2) -> Any:
    """predicate()'s first truthy value, checked until `timeout`; AssertionError naming
    `what` if it never comes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
