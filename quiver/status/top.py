"""`quiver top`: the fleet's status redrawn in the terminal every `interval` seconds.

Plain ANSI (clear, home), so it needs no curses build and works over any
terminal. Keys, read without Enter while stdin is a terminal: `d` sorts the
queues by depth, `r` by deferral rate, `q` quits; Ctrl-C quits too, and the
terminal's mode is always restored. `iterations` bounds the refreshes (tests,
scripts). A failed read keeps the last picture and says why on its top line.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TextIO

from quiver.status.fleet import Fleet, sort_queues
from quiver.status.render import SORTS, render
from quiver.storage.base import StorageError

CLEAR = "\x1b[H\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
KEYS = {"d": "depth", "r": "deferrals"}


@contextlib.contextmanager
def _keys(stdin: TextIO) -> Iterator[bool]:
    """Single keys without Enter while inside, when stdin is a terminal."""
    try:
        fd = stdin.fileno()
        interactive = os.isatty(fd)
    except (OSError, ValueError):
        interactive = False
    if not interactive:
        yield False
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Top:
    def __init__(self, *, read: Callable[[], Fleet], interval: float, sort: str = "depth",
                 iterations: int | None = None, stdin: TextIO | None = None,
                 stdout: TextIO | None = None) -> None:
        self._read = read
        self.interval = interval
        self.sort = sort
        self.iterations = iterations
        self._stdin = stdin or sys.stdin
        self._out = stdout or sys.stdout
        self._fleet = Fleet()
        self._error: str | None = None

    def run(self) -> int:
        with _keys(self._stdin) as interactive:
            self._out.write(HIDE_CURSOR)
            try:
                self._loop(interactive)
            except KeyboardInterrupt:
                pass
            finally:
                self._out.write(SHOW_CURSOR + "\n")
                self._out.flush()
        return 0

    def _loop(self, interactive: bool) -> None:
        refreshes = 0
        while True:
            try:
                self._fleet, self._error = self._read(), None
            except StorageError as exc:
                self._error = str(exc)
            self.draw()
            refreshes += 1
            if self.iterations is not None and refreshes >= self.iterations:
                return
            if not self._wait(interactive):
                return

    def _wait(self, interactive: bool) -> bool:
        """Until the next refresh, acting on keys; False on `q`."""
        deadline = time.monotonic() + self.interval
        while (left := deadline - time.monotonic()) > 0:
            if not interactive:
                time.sleep(left)
                return True
            ready, _, _ = select.select([self._stdin], [], [], left)
            if not ready:
                return True
            key = os.read(self._stdin.fileno(), 1).decode("ascii", "replace").lower()
            if key == "q" or not key:
                return False
            if key in KEYS and KEYS[key] != self.sort:
                self.sort = KEYS[key]
                self.draw()
        return True

    def draw(self) -> None:
        size = shutil.get_terminal_size((120, 40))
        head = (f"quiver top  {datetime.now().strftime('%H:%M:%S')}  every {self.interval:g}s"
                f"  sorted by {SORTS[self.sort]}  (d depth, r deferral rate, q quit)")
        if self._error:
            head += f"  READ FAILED, showing the last picture: {self._error}"
        fleet = self._fleet
        # Room for the queue rows: the screen less the header, tasks and notes.
        fixed = 6 + len(fleet.tasks) + len(fleet.unreadable) + len(fleet.proxies_down) \
            + len(fleet.controls) + len(fleet.adaptive_rates)
        lines = render(fleet, queues=sort_queues(fleet.queues, self.sort),
                       max_queues=max(1, size.lines - fixed), width=size.columns)
        screen = [head[:size.columns], *lines][:max(1, size.lines - 1)]
        self._out.write(CLEAR + "\n".join(screen))
        self._out.flush()
